"""The playground and the training view in headless Chromium (Debian's `chromium`, driven by
playwright): type, Generate, the text grows, Stop; probabilities; chat; a run being trained
updating live. No console errors, and no request leaves the server."""

import json
from pathlib import Path
import shutil
import subprocess
import time

import httpx
import pytest
from serve_support import Server, corpus, server_fixture, train_command

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


class Watched:
    """A page with its console errors and the URLs it requested."""

    def __init__(self, browser, base_url: str):
        self.page = browser.new_page()
        self.errors, self.urls, self.base_url = [], [], base_url
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.goto(base_url + "/")

    def open_tab(self, name: str) -> None:
        """Pick a tab, as a user does (the page opens the training tab by itself while a run
        looks live, which a run trained seconds ago does)."""
        self.page.click(f"button[data-tab={name}]")

    def check_clean(self):
        assert self.errors == []
        assert self.urls and all(url.startswith(self.base_url + "/") for url in self.urls), self.urls


def wait_for(condition, timeout=30.0, what="", every=0.1):
    """Poll `condition` until it holds; TimeoutError saying `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not in {timeout} s: {what}")
        time.sleep(every)


server = server_fixture()


def test_generate_grows_the_text_and_stop_stops_it(browser, server):
    """Generate streams text into the box as it comes; Stop ends it at once, closes the stream
    (the server stops computing) and leaves the text editable for the next Generate."""
    watched = Watched(browser, server.url)
    page = watched.page
    # A slow network (40 kB/s, about 200 events a second), so that the 2,000 characters
    # asked for take seconds to arrive however fast the machine: Stop comes before the end.
    page.context.new_cdp_session(page).send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": 40_000, "uploadThroughput": -1})
    watched.open_tab("completion")
    page.fill("#text", "ROMEO:")
    page.locator("#c-max_tokens").fill("2000")
    page.fill("#seed", "3")
    page.click("#generate")
    length = lambda: len(page.input_value("#text"))  # noqa: E731
    wait_for(lambda: length() > 40)
    first = length()
    wait_for(lambda: length() > first + 20)  # it keeps growing in place
    page.click("#stop")
    wait_for(lambda: page.is_enabled("#generate"))
    stopped = length()
    assert stopped < len("ROMEO:") + 2000
    time.sleep(0.5)
    assert length() == stopped
    assert server.wait_idle(5)["active_requests"] == 0  # Stop closed the stream, and the server stopped computing
    assert page.input_value("#text").startswith("ROMEO:")
    page.fill("#text", page.input_value("#text") + "\nJULIET:")  # editable: the next Generate continues the edit
    watched.check_clean()


def test_probability_view_and_chat(browser, server):
    """The probability view colours one span per token with its probability and alternatives in
    the title; the chat tab shows the user's message and the assistant's reply."""
    watched = Watched(browser, server.url)
    page = watched.page
    watched.open_tab("completion")
    page.locator("#c-max_tokens").fill("30")
    page.check("#probs")
    page.click("#generate")
    wait_for(lambda: page.locator("#probview span").count() == 30 and page.is_enabled("#generate"))
    title = page.locator("#probview span").first.get_attribute("title")
    assert "%" in title and "alternatives" in title
    watched.open_tab("chat")
    page.fill("#chatinput", "Good morrow")
    page.click("#send")
    wait_for(lambda: page.locator(".msg").count() == 2 and page.is_enabled("#send"))
    assert page.locator(".msg").first.inner_text() == "user: Good morrow"
    assert page.locator(".msg").nth(1).inner_text().startswith("assistant:")
    watched.check_clean()


def test_training_view_updates_while_a_run_trains(browser, tmp_path, shakespeare):
    """`blu serve` on a run being trained: 503 until the first weights, then the page's training
    view shows new steps and samples without a reload, and the engine picks up newer weights."""
    out = tmp_path / "live"
    training = subprocess.Popen(train_command(corpus(tmp_path, shakespeare), out, 400, 20),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        wait_for(lambda: (out / "config.json").exists() and (out / "tokenizer.json").exists(), 60)
        server = Server(out, wait_ready=False)
        if server.health()["status"] == "loading":
            refused = httpx.post(server.url + "/v1/completions", json={"prompt": "A"}, timeout=10)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_not_ready"
            assert refused.headers["retry-after"]
        watched = Watched(browser, server.url)
        page = watched.page
        wait_for(lambda: page.is_visible("#training"), 60, "the training tab opens")  # opens by itself: the run is training
        step = lambda: int(page.inner_text("#t-step")) if page.inner_text("#t-step").isdigit() else 0  # noqa: E731
        wait_for(lambda: step() > 0, 60, "a step shown")
        seen = step()
        wait_for(lambda: step() > seen, 60, "a later step shown")
        wait_for(lambda: page.locator(".sample").count() >= 2, 90, "two samples shown")
        assert page.inner_text("#t-state") == "training"
        wait_for(lambda: server.health()["weights_reloaded"] >= 1, 60, "newer weights loaded")
        watched.check_clean()
    finally:
        training.terminate()
        training.wait(30)
        if server:
            server.stop()


def test_page_asks_for_the_key(browser, served_run):
    """With --api-key the page loads (it is public), asks for the key, and works once given it."""
    with Server(served_run, "--api-key", "k-123") as server:
        watched = Watched(browser, server.url)
        page = watched.page
        page.wait_for_selector("#keyform", state="visible", timeout=30_000)
        page.fill("#key", "k-123")
        page.click("#keyform button")
        wait_for(lambda: "parameters" in page.inner_text("#model"), 30, "the model shown")
        watched.open_tab("completion")
        page.locator("#c-max_tokens").fill("20")
        page.fill("#text", "ROMEO:")
        page.click("#generate")
        wait_for(lambda: len(page.input_value("#text")) == len("ROMEO:") + 20, 30, "20 characters generated")
        # The only console errors are the browser's own notes on the 401s that made the page ask.
        assert watched.errors and all("401" in error for error in watched.errors)
        watched.errors.clear()
        watched.check_clean()


def test_chat_tab_uses_the_runs_template_keeps_history_and_streams(browser, chat_runs):
    """Guards against a chat tab that sends one message instead of the conversation, asks for a
    whole answer instead of a stream, or shows something else than the template's reply: on a
    run fine-tuned on conversations (its own ChatML template), two messages sent from the page go
    out as the growing history with stream on, each reply shown is the one the API gives for that
    history (the learned reply, ended at the end-of-turn token), the tab names the template, and
    the training tab shows the held-out answers beside their references."""
    from chat_support import REPLY

    with Server(chat_runs[1]) as server:
        watched = Watched(browser, server.url)
        page = watched.page
        sent = []
        page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions") else None)
        watched.open_tab("completion")  # the controls live there, and the chat tab uses them
        page.locator("#c-temperature").fill("0")
        watched.open_tab("chat")
        wait_for(lambda: page.inner_text("#chatformat") == "the run's own chat template", 30, "the template named")
        for shown, line in ((2, "Good morrow"), (4, "What news?")):
            page.fill("#chatinput", line)
            page.click("#send")
            wait_for(lambda n=shown: page.locator(".msg").count() == n and page.is_enabled("#send"), 60, "a reply")
            assert page.locator(".msg").nth(shown - 1).inner_text() == f"assistant: {REPLY}"
        assert [body["stream"] for body in sent] == [True, True]
        assert sent[1]["messages"] == [{"role": "user", "content": "Good morrow"}, {"role": "assistant", "content": REPLY},
                                       {"role": "user", "content": "What news?"}]
        answer = server.client().chat.completions.create(model=sent[1]["model"], messages=sent[1]["messages"],
                                                         temperature=0)
        assert answer.choices[0].message.content == REPLY and answer.choices[0].finish_reason == "stop"
        watched.open_tab("training")
        wait_for(lambda: page.locator(".sample").count() == 3, 30, "three samples")
        assert page.locator(".sample").first.inner_text().count(f"model:     {REPLY}") == 3
        watched.check_clean()
