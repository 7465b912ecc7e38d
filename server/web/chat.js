// The chat page: talks to this server's own /v1/chat/completions, streamed, like any OpenAI client.
// The conversation and settings stay in localStorage; the API key only in sessionStorage (this tab).
import { renderInto } from "./render.js";

const STORE = "qwen-ascend-llm/chat";
const KEY_STORE = "qwen-ascend-llm/api-key";
const byId = (id) => document.getElementById(id);
const ui = {
  log: byId("log"), scroll: byId("scroll"), form: byId("ask"), prompt: byId("prompt"), send: byId("send"),
  stop: byId("stop"), status: byId("status"), newChat: byId("new-chat"), settings: byId("settings"),
  system: byId("system-prompt"), temperature: byId("temperature"), maxTokens: byId("max-tokens"),
  keyField: byId("api-key-field"), key: byId("api-key"), model: byId("model-name"),
};

let state = load();
let running = null; // {controller} while an answer streams

function load() {
  const fresh = { messages: [], system: ui.system.value, temperature: "", maxTokens: "" };
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "null");
    if (saved && Array.isArray(saved.messages)) {
      const messages = saved.messages.filter((m) => (m.role === "user" || m.role === "assistant") &&
                                                    typeof m.content === "string")
        .map((m) => (typeof m.thinking === "string" ? m : { ...m, thinking: "" }));
      return { ...fresh, ...saved, messages };
    }
  } catch {
    // an unreadable entry (edited by hand, another version): start a new chat
  }
  return fresh;
}

function save() {
  try {
    localStorage.setItem(STORE, JSON.stringify(state));
  } catch {
    // storage full or disabled: the chat still works, it just will not survive a reload
  }
}

function say(text) {
  ui.status.textContent = text;
}

function apiKey() {
  return ui.key.value.trim();
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey()) h.Authorization = `Bearer ${apiKey()}`;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch {
    // not our JSON error shape (a proxy's page): the status says enough
  }
  return `HTTP ${response.status}`;
}

function needKey() {
  ui.keyField.hidden = false;
  ui.settings.open = true;
  say(apiKey() ? "The server refused this API key: check it under Settings."
               : "This server needs an API key: enter it under Settings.");
}

async function checkServer() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: headers() });
  } catch {
    say("Cannot reach the server.");
    return;
  }
  if (response.status === 401) {
    needKey();
    return;
  }
  if (!response.ok) {
    say(await errorText(response));
    return;
  }
  const body = await response.json();
  ui.model.textContent = (body.data && body.data[0] && body.data[0].id) || "";
  if (!running) say("");
}

/** The model's thinking (reasoning_content) above its answer, folded away in a <details> the reader may
 * open; made on the first piece of thinking, rendered as text like the answer. */
function showThinking(el, text) {
  if (!text) return;
  let box = el.querySelector(".thinking");
  if (!box) {
    box = document.createElement("details");
    box.className = "thinking";
    const summary = document.createElement("summary");
    summary.textContent = "Thinking";
    const thought = document.createElement("div");
    thought.className = "thought";
    box.append(summary, thought);
    el.querySelector(".body").before(box);
  }
  renderInto(box.querySelector(".thought"), text);
}

function messageElement(message) {
  const el = document.createElement("article");
  el.className = `msg ${message.role}`;
  const who = document.createElement("h2");
  who.className = "who";
  who.textContent = message.role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "body";
  renderInto(body, message.content);
  const meta = document.createElement("p");
  meta.className = "meta";
  meta.textContent = message.line || "";
  el.append(who, body, meta);
  showThinking(el, message.thinking);
  return el;
}

function nearBottom() {
  const s = ui.scroll;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}

function scrollDown() {
  ui.scroll.scrollTop = ui.scroll.scrollHeight;
}

function renderAll() {
  const nodes = state.messages.map(messageElement);
  if (!nodes.length) {
    const hint = document.createElement("p");
    hint.className = "empty";
    hint.textContent = "Ask a question below. The conversation stays in this browser until you start a new chat.";
    nodes.push(hint);
  }
  ui.log.replaceChildren(...nodes);
  scrollDown();
}

function request() {
  const messages = [];
  if (state.system.trim()) messages.push({ role: "system", content: state.system });
  for (const m of state.messages) messages.push({ role: m.role, content: m.content });
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  const temperature = parseFloat(state.temperature);
  if (Number.isFinite(temperature)) body.temperature = temperature;
  const maxTokens = parseInt(state.maxTokens, 10);
  if (Number.isFinite(maxTokens)) body.max_tokens = maxTokens;
  return body;
}

/** The JSON payloads of a server-sent-events body, until [DONE]. */
async function* sseEvents(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, cut).replace(/\r$/, "");
        buffer = buffer.slice(cut + 1);
        if (line === "") { // an event ends
          const payload = data.join("\n");
          data = [];
          if (payload === "[DONE]") return;
          if (payload) yield JSON.parse(payload);
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        } // other fields (event:, id:) and ": ping" comments carry nothing for us
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function seconds(ms) {
  return (ms / 1000).toFixed(2);
}

/** The terminal chat's line: first token latency, decode and total speed, prompt tokens and how many of
 * them the server's KV cache already held. Times are measured here, so they include the network. */
function speedLine({ started, first, ended, usage, finish, stopped }) {
  const parts = [];
  if (first !== null) parts.push(`first token ${seconds(first - started)}s`);
  if (usage) {
    const n = usage.completion_tokens;
    const decode = (ended - first) / 1000;
    if (first !== null && n > 1 && decode > 0) parts.push(`decode ${((n - 1) / decode).toFixed(1)} tok/s`);
    if (ended > started) parts.push(`total ${(n / ((ended - started) / 1000)).toFixed(1)} tok/s`);
    const reused = (usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens) || 0;
    parts.push(`${usage.prompt_tokens} prompt tokens (${reused} reused), ${n} new`);
  }
  if (stopped) parts.push(`stopped after ${seconds(ended - started)}s`);
  else if (finish === "length") parts.push("stopped: length limit");
  return parts.join(" | ");
}

function busy(on) {
  ui.send.hidden = on;
  ui.stop.hidden = !on;
  (on ? ui.stop : ui.prompt).focus();
}

async function send(text) {
  if (running || !text.trim()) return;
  const user = { role: "user", content: text };
  const answer = { role: "assistant", content: "", thinking: "", line: "" };
  const turns = state.messages; // "New chat" during the answer replaces it: this turn then goes nowhere
  if (!turns.length) ui.log.replaceChildren();
  turns.push(user);
  save();
  const userEl = messageElement(user);
  const answerEl = messageElement(answer);
  answerEl.classList.add("streaming");
  answerEl.setAttribute("aria-busy", "true");
  ui.log.append(userEl, answerEl);
  scrollDown();
  ui.prompt.value = "";
  say("");
  const controller = new AbortController();
  running = { controller };
  busy(true);

  const body = answerEl.querySelector(".body");
  let frame = 0;
  const draw = () => {
    frame = 0;
    const follow = nearBottom();
    renderInto(body, answer.content);
    showThinking(answerEl, answer.thinking);
    if (follow) scrollDown();
  };
  const run = { started: performance.now(), first: null, ended: 0, usage: null, finish: null, stopped: false };
  let failure = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(request()), signal: controller.signal,
    });
    if (!response.ok) {
      // Refused before anything was generated: take the turn back, so it can be sent again as it is.
      turns.pop();
      userEl.remove();
      answerEl.remove();
      if (!turns.length) renderAll();
      ui.prompt.value = text;
      if (response.status === 401) needKey();
      else say(`The server refused the message: ${await errorText(response)}`);
      return;
    }
    for await (const event of sseEvents(response.body)) {
      if (event.error) {
        failure = event.error.message || "unknown error";
        break;
      }
      const choice = event.choices && event.choices[0];
      const delta = (choice && choice.delta) || {};
      // The thinking is shown but never sent back: request() sends each turn's content only.
      for (const [field, piece] of [["thinking", delta.reasoning_content], ["content", delta.content]]) {
        if (!piece) continue;
        if (run.first === null) run.first = performance.now();
        answer[field] += piece;
        if (!frame) frame = requestAnimationFrame(draw);
      }
      if (choice && choice.finish_reason) run.finish = choice.finish_reason;
      if (event.usage) run.usage = event.usage;
    }
  } catch (e) {
    if (e.name === "AbortError") run.stopped = true;
    else failure = `the connection failed (${e.message})`;
  } finally {
    running = null;
    if (frame) cancelAnimationFrame(frame);
    if (answerEl.isConnected) {
      run.ended = performance.now();
      answer.line = speedLine(run);
      draw();
      answerEl.querySelector(".meta").textContent = answer.line;
      answerEl.classList.remove("streaming");
      answerEl.removeAttribute("aria-busy");
      if (answer.content || answer.thinking) turns.push(answer);
      else answerEl.remove();
      save();
    }
    if (failure) say(`The answer ended with an error: ${failure}`);
    busy(false);
  }
}

function bindSettings() {
  ui.system.value = state.system;
  ui.temperature.value = state.temperature;
  ui.maxTokens.value = state.maxTokens;
  const fields = [[ui.system, "system"], [ui.temperature, "temperature"], [ui.maxTokens, "maxTokens"]];
  for (const [input, name] of fields) {
    input.addEventListener("input", () => {
      state[name] = input.value;
      save();
    });
  }
  ui.key.value = sessionStorage.getItem(KEY_STORE) || "";
  ui.keyField.hidden = !apiKey();
  ui.key.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORE, apiKey());
    checkServer();
  });
}

ui.form.addEventListener("submit", (e) => {
  e.preventDefault();
  send(ui.prompt.value);
});
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    ui.form.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => running && running.controller.abort());
ui.newChat.addEventListener("click", () => {
  if (running) running.controller.abort();
  state.messages = [];
  save();
  renderAll();
  say("");
  ui.prompt.focus();
});

bindSettings();
renderAll();
checkServer();
