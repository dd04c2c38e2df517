// The chat tab: the conversation is kept here and sent whole each turn; the reply streams in.
"use strict";
const chat = { messages: [], controller: null };

function showMessage(role, content) {
  const div = document.createElement("div");
  div.className = "msg";
  const who = document.createElement("b");
  who.textContent = role + ": ";
  const body = document.createElement("span");
  body.textContent = content;
  div.append(who, body);
  document.getElementById("messages").appendChild(div);
  return body;
}

async function send(event) {
  event.preventDefault();
  const input = document.getElementById("chatinput");
  const error = document.getElementById("chaterror");
  if (!input.value.trim()) return;
  chat.messages.push({ role: "user", content: input.value });
  showMessage("user", input.value);
  input.value = "";
  error.hidden = true;
  const { max_tokens, ...controls } = controlValues();
  const reply = showMessage("assistant", "");
  chat.controller = new AbortController();
  setChatRunning(true);
  try {
    await stream("/v1/chat/completions",
      { model: blu.model, messages: chat.messages, stream: true, max_completion_tokens: max_tokens, ...controls },
      chat.controller.signal, (chunk) => {
        const choice = chunk.choices[0];
        if (choice && choice.delta && choice.delta.content) reply.textContent += choice.delta.content;
      });
  } catch (e) {
    if (e.name !== "AbortError") { error.textContent = e.message; error.hidden = false; }
  } finally {
    chat.messages.push({ role: "assistant", content: reply.textContent });
    setChatRunning(false);
  }
}

function setChatRunning(running) {
  document.getElementById("send").disabled = running;
  document.getElementById("chatstop").disabled = !running;
}

document.getElementById("chatform").addEventListener("submit", send);
document.getElementById("chatstop").addEventListener("click", () => chat.controller && chat.controller.abort());
document.getElementById("chatclear").addEventListener("click", () => {
  chat.messages = [];
  document.getElementById("messages").textContent = "";
});
