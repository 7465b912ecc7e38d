// Model output is untrusted. It is turned into DOM nodes here with createElement and textContent only,
// never parsed as HTML: a <script>, an <img onerror=...> or a [link](javascript:...) in an answer shows up
// as the characters the model wrote. The subset drawn: fenced code blocks (with a copy button), `inline
// code` and **bold**; everything else, links included, stays plain text.

const FENCE = /^\s*(`{3,}|~{3,})\s*([^`\s]*)/;
const INLINE = /`([^`\n]+)`|\*\*([^*\n]+)\*\*/g;

function closes(line, fence) {
  const mark = line.trim();
  return mark.length >= fence.length && mark === fence[0].repeat(mark.length);
}

/** Split an answer into text and code segments. A fence still open at the end (the answer is being
 * streamed) runs to the end of the text. */
export function segments(text) {
  const out = [];
  let prose = [];
  let code = null;
  for (const line of text.split("\n")) {
    if (code === null) {
      const open = line.match(FENCE);
      if (open) {
        if (prose.length) out.push({ kind: "text", text: prose.join("\n") });
        prose = [];
        code = { kind: "code", fence: open[1], lang: open[2].slice(0, 24), lines: [] };
      } else {
        prose.push(line);
      }
    } else if (closes(line, code.fence)) {
      out.push({ kind: "code", lang: code.lang, text: code.lines.join("\n") });
      code = null;
    } else {
      code.lines.push(line);
    }
  }
  if (code !== null) out.push({ kind: "code", lang: code.lang, text: code.lines.join("\n"), open: true });
  else if (prose.length && prose.join("\n").trim() !== "") out.push({ kind: "text", text: prose.join("\n") });
  return out;
}

function inline(parent, text) {
  let at = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > at) parent.append(document.createTextNode(text.slice(at, m.index)));
    const el = document.createElement(m[1] !== undefined ? "code" : "strong");
    el.textContent = m[1] !== undefined ? m[1] : m[2];
    parent.append(el);
    at = m.index + m[0].length;
  }
  if (at < text.length) parent.append(document.createTextNode(text.slice(at)));
}

async function copy(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Plain http on another host is no secure context: no clipboard API there, so copy a selection.
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

function codeBlock(segment) {
  const figure = document.createElement("figure");
  figure.className = "code";
  const head = document.createElement("figcaption");
  const lang = document.createElement("span");
  lang.textContent = segment.lang || "code";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.setAttribute("aria-label", `Copy ${segment.lang || "code"} block`);
  button.addEventListener("click", async () => {
    try {
      await copy(segment.text);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Copy failed";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
  head.append(lang, button);
  const pre = document.createElement("pre");
  pre.tabIndex = 0; // a long line scrolls sideways: the keyboard must reach it too
  const code = document.createElement("code");
  code.textContent = segment.text;
  pre.append(code);
  figure.append(head, pre);
  return figure;
}

/** The nodes that show `text` (an answer, or a user's message) inside `parent`, replacing its children. */
export function renderInto(parent, text) {
  const nodes = [];
  for (const segment of segments(text)) {
    if (segment.kind === "code") {
      nodes.push(codeBlock(segment));
    } else {
      const p = document.createElement("div");
      p.className = "prose";
      inline(p, segment.text.replace(/^\n+|\n+$/g, ""));
      nodes.push(p);
    }
  }
  parent.replaceChildren(...nodes);
}
