// Talking to the server: the key (asked for when the server wants one), JSON calls, and
// OpenAI's server-sent events read from a fetch body, so Stop can abort them.
"use strict";
const blu = { key: localStorage.getItem("blu-key") || "", model: null, info: null, tabChosen: false };

function headers() {
  const h = { "Content-Type": "application/json" };
  if (blu.key) h["Authorization"] = "Bearer " + blu.key;
  return h;
}

function askForKey() {
  const form = document.getElementById("keyform");
  form.hidden = false;
  document.getElementById("key").focus();
}

document.getElementById("keyform").addEventListener("submit", (event) => {
  event.preventDefault();
  blu.key = document.getElementById("key").value.trim();
  localStorage.setItem("blu-key", blu.key);
  document.getElementById("keyform").hidden = true;
  loadModel();
});

async function apiError(response) {
  if (response.status === 401) askForKey();
  try {
    const body = await response.json();
    return new Error(body.error ? body.error.message : response.statusText);
  } catch (e) {
    return new Error(response.status + " " + response.statusText);
  }
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await apiError(response);
  return response.json();
}

// POST a streamed request and call onChunk(parsed JSON) for each event until [DONE].
async function stream(path, body, signal, onChunk) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!response.ok) throw await apiError(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      onChunk(chunk);
    }
  }
}

async function loadModel() {
  const status = document.getElementById("status");
  try {
    // Not /health: it answers 503 until the first weights, which the browser reports as an error.
    // Whether the weights are there comes with the training view's data (training.js).
    const models = await getJSON("/v1/models");
    blu.info = models.data[0];
    blu.model = blu.info.id;
    document.getElementById("chatformat").textContent = blu.info.chat;  // the run's own template, or a transcript
    document.getElementById("model").textContent =
      `${blu.model} · ${blu.info.parameters.toLocaleString()} parameters · context ${blu.info.context} · ${blu.info.tokenizer} vocabulary of ${blu.info.vocab_size}`;
  } catch (error) {
    status.textContent = error.message;
  }
}

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => { blu.tabChosen = true; showTab(tab.dataset.tab); });
}

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== name;
  document.dispatchEvent(new CustomEvent("tab", { detail: name }));
}

loadModel();
