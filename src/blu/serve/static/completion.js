// The completion tab: the continuation streams into the text box, which stays editable, so the
// next Generate continues whatever the box holds. "Colour by probability" asks for logprobs
// and shows each generated character on a red (unlikely) to green (likely) background, with
// the model's alternatives on hover.
"use strict";
const completion = { controller: null };

function probabilityColour(p) {
  return `hsl(${Math.round(120 * p)}, 70%, ${Math.round(88 - 18 * p)}%)`;
}

function addProbabilitySpans(view, logprobs) {
  for (let i = 0; i < logprobs.tokens.length; i++) {
    const span = document.createElement("span");
    const p = Math.exp(logprobs.token_logprobs[i]);
    span.textContent = logprobs.tokens[i];
    span.style.background = probabilityColour(p);
    const alternatives = Object.entries(logprobs.top_logprobs[i] || {})
      .map(([token, lp]) => `${JSON.stringify(token)} ${(Math.exp(lp) * 100).toFixed(1)}%`).join("\n");
    span.title = `${JSON.stringify(logprobs.tokens[i])}: ${(p * 100).toFixed(1)}%\nalternatives:\n${alternatives}`;
    view.appendChild(span);
  }
}

async function generate() {
  const text = document.getElementById("text");
  const error = document.getElementById("error");
  const view = document.getElementById("probview");
  const withProbs = document.getElementById("probs").checked;
  const controls = controlValues();
  error.hidden = true;
  if (Number.isNaN(controls.seed)) { error.textContent = "the seed must be a whole number"; error.hidden = false; return; }
  const body = { model: blu.model, prompt: text.value, stream: true, ...controls };
  if (withProbs) body.logprobs = 5;
  view.hidden = !withProbs;
  view.textContent = "";
  completion.controller = new AbortController();
  setRunning(true);
  const started = performance.now();
  let characters = 0;
  try {
    await stream("/v1/completions", body, completion.controller.signal, (chunk) => {
      const choice = chunk.choices[0];
      if (!choice || !choice.text) return;
      text.value += choice.text;
      text.scrollTop = text.scrollHeight;
      characters += choice.text.length;
      if (choice.logprobs) addProbabilitySpans(view, choice.logprobs);
      const seconds = (performance.now() - started) / 1000;
      document.getElementById("speed").textContent = `${characters} characters, ${(characters / seconds).toFixed(0)}/s`;
    });
  } catch (e) {
    if (e.name !== "AbortError") { error.textContent = e.message; error.hidden = false; }
  } finally {
    setRunning(false);
  }
}

function setRunning(running) {
  document.getElementById("generate").disabled = running;
  document.getElementById("stop").disabled = !running;
  document.getElementById("text").readOnly = running;
}

document.getElementById("generate").addEventListener("click", generate);
document.getElementById("stop").addEventListener("click", () => completion.controller && completion.controller.abort());
document.getElementById("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) generate();
});
