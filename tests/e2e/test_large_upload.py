"""Large artifacts through Envoy: a 100 MiB file (the limit itself) up and down
with the official agent-protocol-client and with streaming `requests`,
checked by sha256, while agentd's resident memory stays flat; one byte more
is refused with 413 and leaves nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import threading
import time

import psutil
import pytest
import requests
from agent_protocol_client import AgentApi, ApiClient, ApiException, Configuration

from helpers import AP, MAX_UPLOAD, MIB, MultipartFile, assert_ap_error, make_file

# A generous bound that still catches a server holding a 100 MiB file in memory.
RSS_GROWTH_LIMIT = 30 * MIB

pytestmark = pytest.mark.timeout(300)


class RssSampler:
    """Samples a process's RSS in a background thread."""

    def __init__(self, pid: int, interval: float = 0.01):
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.proc.memory_info().rss)

    @property
    def peak(self) -> int:
        return max(self.samples)


def baseline_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    samples = []
    for _ in range(10):
        samples.append(proc.memory_info().rss)
        time.sleep(0.02)
    return int(statistics.median(samples))


def assert_flat(label: str, base: int, sampler: RssSampler) -> None:
    growth = sampler.peak - base
    print(f"{label}: {len(sampler.samples)} RSS samples, baseline {base / MIB:.1f} MiB, growth {growth / MIB:.1f} MiB")
    assert len(sampler.samples) > 5, "too few RSS samples"
    assert growth < RSS_GROWTH_LIMIT, (
        f"{label}: agentd RSS grew by {growth / MIB:.1f} MiB (baseline {base / MIB:.1f} MiB, "
        f"peak {sampler.peak / MIB:.1f} MiB)"
    )


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    """A file of exactly the limit (100 MiB) and one a byte over, on disk."""
    d = tmp_path_factory.mktemp("big")
    at_limit, over = d / "at_limit.bin", d / "over_limit.bin"
    files = {
        "at_limit": (at_limit, make_file(at_limit, MAX_UPLOAD, b"at")),
        "over": (over, make_file(over, MAX_UPLOAD + 1, b"over")),
    }
    yield files
    for path, _ in files.values():
        path.unlink(missing_ok=True)


def stream_download_sha256(url: str) -> tuple[str, int, requests.structures.CaseInsensitiveDict]:
    h = hashlib.sha256()
    n = 0
    with requests.get(url, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        for chunk in r.iter_content(MIB):
            h.update(chunk)
            n += len(chunk)
        return h.hexdigest(), n, r.headers


def test_100mib_with_the_official_client(stack, big_files):
    path, digest = big_files["at_limit"]
    tid = stack.create_task("big upload, official client")["task_id"]
    pid = stack.agentd_pid
    base = baseline_rss(pid)

    async def round_trip():
        async with ApiClient(Configuration(host=stack.ap_url)) as client:
            api = AgentApi(client)
            with RssSampler(pid) as up:
                artifact = await api.upload_agent_task_artifacts(task_id=tid, file=str(path), relative_path="big")
            with RssSampler(pid) as down:
                data = await api.download_agent_task_artifact(task_id=tid, artifact_id=artifact.artifact_id)
            return artifact, bytes(data), up, down

    artifact, data, up, down = asyncio.run(round_trip())
    assert artifact.file_name == "at_limit.bin"
    assert artifact.relative_path == "big"
    assert artifact.agent_created is False
    assert len(data) == MAX_UPLOAD
    assert hashlib.sha256(data).hexdigest() == digest
    del data
    on_disk = stack.data_dir / "workspaces" / tid / "big" / "at_limit.bin"
    assert on_disk.stat().st_size == MAX_UPLOAD
    assert_flat("upload (official client)", base, up)
    assert_flat("download (official client)", base, down)
    requests.delete(f"{stack.ap_url}{AP}/tasks/{tid}", timeout=60)


def test_100mib_streamed_with_requests(stack, big_files):
    path, digest = big_files["at_limit"]
    tid = stack.create_task("big upload, streamed")["task_id"]
    pid = stack.agentd_pid
    base = baseline_rss(pid)
    # The file is read from disk a MiB at a time; relative_path comes after the file part.
    body = MultipartFile(path, "streamed.bin", fields_after=[("relative_path", "data/streamed.bin")])
    with RssSampler(pid) as up:
        r = requests.post(
            f"{stack.trae_url}{AP}/tasks/{tid}/artifacts", data=body, headers=body.headers(), timeout=240
        )
    assert r.status_code == 200, r.text
    a = r.json()
    assert (a["file_name"], a["relative_path"], a["file_size"]) == ("streamed.bin", "data/streamed.bin", MAX_UPLOAD)

    with RssSampler(pid) as down:
        got, n, headers = stream_download_sha256(f"{stack.ap_url}{AP}/tasks/{tid}/artifacts/{a['artifact_id']}")
    assert n == MAX_UPLOAD
    assert got == digest
    assert headers["content-disposition"] == 'attachment; filename="streamed.bin"'
    assert_flat("upload (requests)", base, up)
    assert_flat("download (requests)", base, down)
    requests.delete(f"{stack.ap_url}{AP}/tasks/{tid}", timeout=60)


def test_over_100mib_is_refused_and_nothing_is_stored(stack, big_files):
    path, _ = big_files["over"]
    tid = stack.create_task("too big")["task_id"]
    assert stack.upload(tid, "small.txt", b"already here").status_code == 200
    before = stack.snapshot((tid,))
    pid = stack.agentd_pid
    base = baseline_rss(pid)

    body = MultipartFile(path, "over_limit.bin", fields_before=[("relative_path", "big")])
    with RssSampler(pid) as up:
        r = requests.post(f"{stack.ap_url}{AP}/tasks/{tid}/artifacts", data=body, headers=body.headers(), timeout=240)
    assert_ap_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert_flat("refused upload", base, up)

    after = stack.snapshot((tid,))
    assert after == before
    assert not list((stack.data_dir / "tmp").iterdir()), "a partial upload was left behind"
    assert not (stack.data_dir / "workspaces" / tid / "big").exists()


def test_over_100mib_with_the_official_client(stack, big_files):
    path, _ = big_files["over"]
    tid = stack.create_task("too big, official client")["task_id"]
    before = stack.snapshot((tid,))

    async def upload():
        async with ApiClient(Configuration(host=stack.ap_url)) as client:
            return await AgentApi(client).upload_agent_task_artifacts(task_id=tid, file=str(path))

    with pytest.raises(ApiException) as exc:
        asyncio.run(upload())
    assert exc.value.status == 413
    assert stack.snapshot((tid,)) == before
