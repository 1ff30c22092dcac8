/** A minimal text/event-stream parser (the subset agentd sends: `data:` lines,
 *  optional `event:`/`id:`, blank-line terminated messages). */

export interface SseMessage {
  event: string;
  data: string;
  id?: string;
}

export async function* parseSse(body: AsyncIterable<Uint8Array>): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder();
  let buffer = "";
  let message: { event: string; data: string[]; id?: string } = { event: "message", data: [] };

  function* lines(final: boolean): Generator<string> {
    for (;;) {
      const match = /\r\n|\r|\n/.exec(buffer);
      // A lone \r at the end may be the first half of \r\n: wait for more.
      if (!match || (!final && match[0] === "\r" && match.index === buffer.length - 1)) return;
      yield buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
    }
  }

  function* feed(line: string): Generator<SseMessage> {
    if (line === "") {
      if (message.data.length) yield { event: message.event, data: message.data.join("\n"), id: message.id };
      message = { event: "message", data: [] };
      return;
    }
    if (line.startsWith(":")) return; // comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") message.data.push(value);
    else if (field === "event") message.event = value;
    else if (field === "id") message.id = value;
  }

  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    for (const line of lines(false)) yield* feed(line);
  }
  buffer += decoder.decode();
  for (const line of lines(true)) yield* feed(line);
}
