// A caller written against the standard EventSource API, the way a browser page or a Node
// service built on the `eventsource` package would follow the dual-call hand-off.
//
// Plain script (no import/export): a page inlines it, Node imports it for its side effect.
// It defines globalThis.dualcallCall(EventSourceImpl, submitUrl, prompt) -> Promise<text>,
// rejecting with an Error whose message names what went wrong.
//
// What the EventSource does by itself: parse SSE (comments, retry:, CRLF, data: without a
// space), reconnect after a drop with Last-Event-ID of the last dispatched event, stop on 204.
// What the caller adds: Retry-After on 503, a bound on reconnects that bring nothing new,
// DELETE on giving up, `error` as a failure, closing at [DONE].
(() => {
  const MAX_SUBMITS = 4;
  const MAX_IDLE_RECONNECTS = 3;

  class JobFailed extends Error {}

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function submit(submitUrl, prompt) {
    for (let attempt = 1; ; attempt += 1) {
      const response = await fetch(submitUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt, max_tokens: 32 }),
      });
      if (response.status === 202) return response.json();
      if (response.status !== 503) throw new Error(`submit answered ${response.status}`);
      if (attempt >= MAX_SUBMITS) throw new Error(`submit answered 503 ${attempt} times; giving up`);
      const wait = Number(response.headers.get("Retry-After") ?? "1");
      await sleep(1000 * (Number.isFinite(wait) ? wait : 1));
    }
  }

  function stream(EventSourceImpl, url) {
    return new Promise((resolve, reject) => {
      const source = new EventSourceImpl(url);
      const tokens = new Map();
      let finish = null;
      let progressed = false;
      let idle = 0;

      const settle = () => {
        source.close();
        if (finish === null) {
          reject(new Error("the stream ended without end or error"));
        } else if (finish.type === "error") {
          reject(new JobFailed(`generation failed: ${finish.code}: ${finish.message}`));
        } else {
          const indexes = [...tokens.keys()].sort((a, b) => a - b);
          resolve(indexes.map((index) => tokens.get(index)).join(""));
        }
      };

      source.addEventListener("started", () => {
        progressed = true;
      });
      source.addEventListener("token", (event) => {
        const data = JSON.parse(event.data);
        if (!tokens.has(data.index)) tokens.set(data.index, data.text);
        progressed = true;
      });
      source.addEventListener("end", () => {
        finish = { type: "end" };
      });
      source.addEventListener("message", (event) => {
        if (event.data === "[DONE]") settle();
      });
      source.addEventListener("error", (event) => {
        if (typeof event.data === "string") {
          // the contract's `event: error` (a MessageEvent), not a connection error
          const data = JSON.parse(event.data);
          finish = { type: "error", code: data.code, message: data.message };
          return;
        }
        if (source.readyState === EventSourceImpl.CLOSED) {
          // 204 after the final event, or an answer it will not retry: use what arrived
          settle();
          return;
        }
        idle = progressed ? 0 : idle + 1;
        progressed = false;
        if (finish === null && idle > MAX_IDLE_RECONNECTS) {
          source.close();
          reject(new Error(`the stream made no progress in ${idle} reconnects`));
        }
      });
    });
  }

  globalThis.dualcallCall = async (EventSourceImpl, submitUrl, prompt) => {
    const answer = await submit(submitUrl, prompt);
    const streamUrl = new URL(answer.sse_url, submitUrl).href;
    const statusUrl = new URL(answer.status_url ?? `${submitUrl}/${answer.job_id}`, submitUrl).href;
    try {
      return await stream(EventSourceImpl, streamUrl);
    } catch (error) {
      if (!(error instanceof JobFailed)) {
        // abandoned before end/error: cancel it rather than leave it to the TTL
        await fetch(statusUrl, { method: "DELETE" }).catch(() => {});
      }
      throw error;
    }
  };
})();
