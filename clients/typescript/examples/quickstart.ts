// The AutoGPT document's JavaScript example ("SDK和客户端库"), verbatim apart
// from the base URL, which comes from AUTOGPT_BASE_URL (default the document's).
import { AutoGPTClient } from '@autogpt/client';

const client = new AutoGPTClient({
  baseURL: process.env.AUTOGPT_BASE_URL ?? 'http://localhost:8000'
});

// 创建任务
const task = await client.createTask({
  input: '分析销售数据',
  additionalInput: { priority: 'high' }
});

// 执行步骤
const step = await client.executeStep(task.taskId, {
  input: '开始分析'
});
