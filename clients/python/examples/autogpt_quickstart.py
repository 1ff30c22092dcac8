"""The AutoGPT API document's Python client example ("SDK和客户端库"), as
written there; it expects agentd at http://localhost:8000 (`scripts/run`).

The lines after the marked block only show what came back.
"""

# ---- the document's snippet, verbatim ----------------------------------------
from autogpt_client import AutoGPTClient

client = AutoGPTClient(base_url="http://localhost:8000")

# 创建任务
task = client.create_task(
    input="分析销售数据",
    additional_input={"priority": "high"}
)

# 执行步骤
step = client.execute_step(
    task_id=task.task_id,
    input="开始分析"
)

# 获取结果
artifacts = client.get_artifacts(task.task_id)
# ---- end of the snippet -------------------------------------------------------

print(f"task {task.task_id}: step {step.step_id} ({step.state}, is_last={step.is_last})")
print(f"output: {step.output}")
for a in artifacts:
    print(f"artifact {a.artifact_id}: {a.relative_path}/{a.file_name} ({a.file_size} bytes)")
