// Server-sent events over fetch(): POST bodies and AbortController, which EventSource lacks.

/**
 * Yield the events of an SSE response body: {comment: "queued 1"} for `: …` lines and
 * {data: "…"} for each event's data lines (joined by "\n", as the SSE spec says).
 */
export async function* readEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      // a final "\r" may be the first half of "\r\n": wait for the next chunk to tell
      const cr = !done && buffer.endsWith("\r");
      const lines = (cr ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
      buffer = done ? "" : lines.pop() + (cr ? "\r" : "");
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield { data: data.join("\n") };
          data = [];
        } else if (line.startsWith(":")) {
          yield { comment: line.slice(1).trim() };
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        } // `event:`, `id:`, `retry:`: the server sends none
      }
      if (done) {
        if (data.length) yield { data: data.join("\n") };
        return;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** The message of an error body ({"error": {"message": …}}), else the HTTP status line. */
export async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body?.error?.message) return body.error.message;
  } catch {
    // not JSON: fall through
  }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}
