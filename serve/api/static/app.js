// The web chat: one channel per browser tab-group (kept in localStorage), replies streamed over
// server-sent events from POST /v1/chat with "stream": true. An API key, when the backend asks
// for one, comes from the page's #key=... fragment or a prompt, and stays in sessionStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), form = $("chat"), input = $("message"), send = $("send"), status = $("status"), nameBox = $("name");

const fragmentKey = new URLSearchParams(location.hash.slice(1)).get("key");
if (fragmentKey) { sessionStorage.setItem("chandler-key", fragmentKey); history.replaceState(null, "", location.pathname); }

let channel = localStorage.getItem("chandler-channel");
if (!channel) {
  channel = "web-" + Math.random().toString(36).slice(2, 12);
  localStorage.setItem("chandler-channel", channel);
}
nameBox.value = localStorage.getItem("chandler-name") || "Guest";
nameBox.addEventListener("change", () => localStorage.setItem("chandler-name", nameBox.value.trim() || "Guest"));

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem("chandler-key");
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function addTurn(role, who, text) {
  const div = document.createElement("div");
  div.className = "turn " + role;
  const label = document.createElement("span");
  label.className = "who";
  label.textContent = who;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(label, body);
  log.append(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

// A real line of the show: a small "S3E5" tag after it.
function addQuoteTag(bubble, source) {
  const tag = document.createElement("span");
  tag.className = "quote-tag";
  tag.textContent = "S" + source.season + "E" + source.episode;
  tag.title = "Chandler's own line, season " + source.season + ", episode " + source.episode;
  bubble.append(tag);
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch { return response.statusText || "error " + response.status; }
}

async function call(method, path, body) {
  let response = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
  if (response.status === 401) {
    const key = prompt("This Chandler needs an API key:");
    if (key) {
      sessionStorage.setItem("chandler-key", key);
      response = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
    }
  }
  return response;
}

// Server-sent events from a fetch body: `data: {...}` blocks separated by a blank line.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data && data !== "[DONE]") yield JSON.parse(data);
    }
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const message = input.value.trim();
  if (!message) return;
  input.value = "";
  send.disabled = true;
  status.textContent = "";
  const name = nameBox.value.trim() || "Guest";
  addTurn("user", name, message);
  const bubble = addTurn("assistant pending", "Chandler", "");
  const text = bubble.querySelector(".text");
  try {
    const response = await call("POST", "/v1/chat", { channel_id: channel, user: { id: channel, name }, message, stream: true });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const item of events(response)) {
      if (item.delta) text.textContent += item.delta;
      if (item.reply !== undefined) text.textContent = item.reply;
      if (item.source && item.source.kind === "quote") addQuoteTag(bubble, item.source);
      if (item.error) throw new Error(item.error.message);
      log.scrollTop = log.scrollHeight;
    }
    bubble.classList.add("done");
  } catch (error) {
    if (!text.textContent) bubble.remove();
    status.textContent = "Chandler didn't answer: " + error.message;
  } finally {
    bubble.classList.remove("pending");
    send.disabled = false;
    input.focus();
  }
});

$("reset").addEventListener("click", async () => {
  status.textContent = "";
  const response = await call("DELETE", "/v1/channels/" + encodeURIComponent(channel) + "/context");
  if (response.ok) {
    log.replaceChildren();
    status.textContent = "";
  } else {
    status.textContent = "Reset failed: " + (await errorText(response));
  }
});
