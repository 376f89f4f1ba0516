"""The reference UI in a real browser against the whole system, started as `make run` starts
it: sign up, chat and watch the reply being written, rename, reload and find it all again,
delete.

Drives the machine's Chromium (Debian's `chromium` package); no browser is downloaded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.system import RunningSystem, running_system

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
TIMEOUT_MS = 30_000
PASSWORD = "a long browser passphrase"
WATCH_PARTIAL_REPLY = """
window.__partials = [];
new MutationObserver(() => {
    const bubble = document.querySelector('[data-role=assistant].streaming');
    const length = bubble ? bubble.textContent.length : 0;
    if (length > 0 && length !== window.__partials.at(-1)) window.__partials.push(length);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)",
)


# The tests' output folder (git-ignored), as Playwright's own runner would use.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-results" / "browser"


@pytest.fixture(scope="module")
def system(make_database: object, redis_url: str, redis_prefix: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    database_url = make_database()  # type: ignore[operator]
    with running_system(database_url, redis_url, redis_prefix,
                        tmp_path_factory.mktemp("browser-system")) as running:
        yield running


@pytest.fixture
def page(system: RunningSystem) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            context = browser.new_context(base_url=system.url)
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert not errors, errors
        finally:
            browser.close()


def reload_until(page: object, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Reloads the page until `condition` holds once the sidebar has loaded."""
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    deadline = time.monotonic() + timeout
    while True:
        page.reload()
        page.wait_for_selector("[data-testid=sessions][data-loaded=true]", state="attached")
        if condition():
            return
        assert time.monotonic() < deadline, "the read model did not catch up"
        time.sleep(0.3)


def test_a_user_chats_renames_reloads_and_deletes(page: object) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    # Records each length the reply bubble shows while it is still being written.
    page.add_init_script(WATCH_PARTIAL_REPLY)
    page.goto("/")

    # Sign up (and so in): the first visit is signed out.
    expect(page.get_by_test_id("auth")).to_be_visible()
    email = f"tester-{time.time_ns()}@example.com"
    page.get_by_test_id("signup-name").fill("Browser tester")
    page.get_by_test_id("signup-email").fill(email)
    page.get_by_test_id("signup-password").fill(PASSWORD)
    page.get_by_test_id("signup-submit").click()
    expect(page.get_by_test_id("new-chat")).to_be_visible()
    expect(page.get_by_test_id("whoami")).to_contain_text("Browser tester")

    # Chat: the reply is seen while it is being written, then complete.
    page.get_by_test_id("composer").fill("I want to write a horror story")
    page.get_by_test_id("send").click()
    user_message = page.locator("[data-testid=message][data-role=user]")
    expect(user_message).to_have_text("I want to write a horror story")
    reply = page.locator("[data-testid=message][data-role=assistant]")
    expect(reply).not_to_have_class(re.compile("streaming"), timeout=TIMEOUT_MS)
    expect(reply).not_to_have_class(re.compile("failed"))
    final_text = reply.inner_text()
    assert final_text.strip()
    # The reply grew on screen delta by delta before it was complete.
    partials = page.evaluate("window.__partials")
    assert len(partials) >= 3 and partials == sorted(partials), partials
    assert partials[-1] <= len(final_text)
    expect(page.get_by_test_id("error")).to_be_hidden()

    # The session is listed with its preview and count.
    session = page.locator("[data-testid=session]")
    expect(session).to_have_count(1)
    expect(session).to_contain_text("2 messages")

    # Rename (the title comes from a prompt dialog).
    page.once("dialog", lambda dialog: dialog.accept("Haunted house"))
    page.get_by_test_id("rename").click()
    expect(page.get_by_test_id("chat-title")).to_have_text("Haunted house")
    expect(session).to_contain_text("Haunted house")

    # Reload: the user, the session and its messages come back from the API. A rename
    # answers no event position to wait for, so the read model may be a moment behind.
    reload_until(page, lambda: "Haunted house" in session.inner_text())
    expect(session).to_have_count(1)
    session.click()
    expect(page.get_by_test_id("chat-title")).to_have_text("Haunted house")
    messages = page.locator("[data-testid=message]")
    expect(messages).to_have_count(2)
    expect(messages.nth(0)).to_have_text("I want to write a horror story")
    expect(messages.nth(1)).to_have_text(final_text)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "session-after-reload.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0

    # Delete (confirmed in a dialog): gone now and after another reload.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("delete").click()
    expect(session).to_have_count(0)
    expect(page.get_by_test_id("messages").locator("li")).to_have_count(0)
    reload_until(page, lambda: session.count() == 0)
    expect(page.get_by_test_id("new-chat")).to_be_visible()
    expect(page.get_by_test_id("error")).to_be_hidden()

    # Sign out: the cookie no longer names anyone, even after a reload; sign in again.
    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("auth")).to_be_visible()
    page.reload()
    expect(page.get_by_test_id("auth")).to_be_visible()
    expect(page.get_by_test_id("new-chat")).to_be_hidden()
    page.get_by_test_id("signin-email").fill(email)
    page.get_by_test_id("signin-password").fill(PASSWORD)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("whoami")).to_contain_text("Browser tester")
    expect(page.get_by_test_id("new-chat")).to_be_visible()
    expect(page.get_by_test_id("error")).to_be_hidden()


def test_a_failing_call_shows_a_clear_message(page: object) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    # A sign-in the API refuses (no such account).
    page.goto("/")
    page.get_by_test_id("signin-email").fill("nobody@example.com")
    page.get_by_test_id("signin-password").fill("not the password")
    page.get_by_test_id("signin-submit").click()
    error = page.get_by_test_id("error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(re.compile(r"\w{3,}"))


def test_the_event_stream_parser_survives_any_chunking(page: object) -> None:
    """Every split of a stream into two network chunks parses the same, a split inside a
    CRLF included (a blank line read too early would end an event without its data)."""
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    page.goto("/")
    failures = page.evaluate("""async () => {
        const text = 'id: 1\\r\\nevent: delta\\r\\ndata: {"text": "a"}\\r\\n\\r\\n'
                   + ': ping\\r\\n\\r\\n' + 'id: 2\\nevent: done\\ndata: {}\\n\\n';
        const want = '1:delta:{"text": "a"}|2:done:{}';
        const failures = [];
        for (let cut = 1; cut < text.length; cut++) {
            const body = new ReadableStream({start(c) {
                for (const part of [text.slice(0, cut), text.slice(cut)]) {
                    c.enqueue(new TextEncoder().encode(part));
                }
                c.close();
            }});
            const got = [];
            for await (const e of sseEvents(body)) got.push(`${e.id}:${e.event}:${e.data}`);
            if (got.join('|') !== want) failures.push([cut, got]);
        }
        return failures;
    }""")
    assert failures == []
