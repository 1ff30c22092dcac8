"""A Python client of agentd's Agent Protocol API (the AutoGPT document's
`autogpt_client`):

    from autogpt_client import AutoGPTClient

    client = AutoGPTClient(base_url="http://localhost:8000")
    task = client.create_task(input="分析销售数据", additional_input={"priority": "high"})
    step = client.execute_step(task_id=task.task_id, input="开始分析")
    artifacts = client.get_artifacts(task.task_id)
"""

from .client import STEP_TIMEOUT, AutoGPTClient, __version__
from .errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    AutoGPTError,
    ConflictError,
    NotFoundError,
    RateLimitError,
)
from .models import Artifact, Page, Record, Step, Task, TaskEvent

__all__ = [
    "APIConnectionError",
    "APIError",
    "Artifact",
    "AuthenticationError",
    "AutoGPTClient",
    "AutoGPTError",
    "ConflictError",
    "NotFoundError",
    "Page",
    "RateLimitError",
    "Record",
    "STEP_TIMEOUT",
    "Step",
    "Task",
    "TaskEvent",
    "__version__",
]
