// The sampling controls, one slider each, shared by the completion and chat tabs.
"use strict";
const CONTROLS = [
  // name, label, min, max, step, value
  ["max_tokens", "max tokens", 1, 2000, 1, 300],
  ["temperature", "temperature", 0, 2, 0.05, 0.8],
  ["top_p", "top p", 0.05, 1, 0.01, 0.9],
  ["top_k", "top k (0 = off)", 0, 100, 1, 0],
  ["min_p", "min p (0 = off)", 0, 0.95, 0.01, 0],
  ["repetition_penalty", "repetition penalty", 1, 2, 0.01, 1],
];

(function buildControls() {
  const box = document.getElementById("controls");
  for (const [name, label, min, max, step, value] of CONTROLS) {
    const div = document.createElement("div");
    div.className = "control";
    div.innerHTML = `<label for="c-${name}"><span>${label}</span><output id="o-${name}">${value}</output></label>
      <input type="range" id="c-${name}" min="${min}" max="${max}" step="${step}" value="${value}">`;
    box.appendChild(div);
    const input = div.querySelector("input");
    input.addEventListener("input", () => { div.querySelector("output").textContent = input.value; });
  }
  const seed = document.createElement("div");
  seed.className = "control";
  seed.innerHTML = `<label for="seed"><span>seed (empty = random)</span></label><input type="text" id="seed" inputmode="numeric">`;
  box.appendChild(seed);
})();

// The request fields of the controls; max_tokens is named by the caller (chat calls it max_completion_tokens).
function controlValues() {
  const values = {};
  for (const [name] of CONTROLS) values[name] = Number(document.getElementById("c-" + name).value);
  const seed = document.getElementById("seed").value.trim();
  if (seed !== "") values.seed = Number(seed);
  return values;
}
