"""The fake Web API answers slack_sdk's real clients, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook import WebhookClient

from bot.testkit.slack import Call, FakeSlack, SlackError


@pytest.fixture
def client(fake_slack: FakeSlack) -> WebClient:
    return WebClient(base_url=fake_slack.api_url, token=fake_slack.bot_token)


@pytest.fixture
def seeded(fake_slack: FakeSlack) -> FakeSlack:
    fake_slack.add_user("U0ALICE", "alice", is_admin=True, email="alice@example.com")
    fake_slack.add_user("U0BOB", "bob")
    fake_slack.add_channel("C0COPY", "brand-copy", members=["U0ALICE", fake_slack.bot_user_id])
    fake_slack.add_channel("G0SECRET", "secret", is_private=True, members=["U0ALICE"])
    fake_slack.add_usergroup("S0APPROVERS", ["U0ALICE", "U0BOB"])
    return fake_slack


def test_server_lifecycle_and_urls() -> None:
    fake = FakeSlack().start()
    try:
        assert fake.api_url == f"http://127.0.0.1:{fake.port}/api/"
        client = WebClient(base_url=fake.api_url, token=fake.bot_token)
        assert client.api_test()["ok"]
    finally:
        fake.stop()
    fake.stop()  # idempotent


def test_auth_test_and_recorded_call(fake_slack: FakeSlack, client: WebClient) -> None:
    answer = client.auth_test()
    assert answer["user_id"] == fake_slack.bot_user_id
    assert answer["bot_id"] == fake_slack.bot_id
    assert answer["team_id"] == fake_slack.team_id
    [call] = fake_slack.calls_for("auth.test")
    assert isinstance(call, Call)
    assert call.token == fake_slack.bot_token
    assert call.headers["authorization"] == f"Bearer {fake_slack.bot_token}"
    assert call.ok


def test_tokens_are_checked(fake_slack: FakeSlack) -> None:
    bad = WebClient(base_url=fake_slack.api_url, token="xoxb-not-a-real-token")
    with pytest.raises(SlackApiError) as err:
        bad.chat_postMessage(channel="C0GENERAL", text="hi")
    assert err.value.response["error"] == "invalid_auth"
    anonymous = WebClient(base_url=fake_slack.api_url)
    with pytest.raises(SlackApiError) as err:
        anonymous.auth_test()
    assert err.value.response["error"] == "not_authed"
    app = WebClient(base_url=fake_slack.api_url, token=fake_slack.app_token)
    with pytest.raises(SlackApiError) as err:
        app.auth_test()
    assert err.value.response["error"] == "not_allowed_token_type"
    assert [c.ok for c in fake_slack.calls] == [False, False, False]
    assert fake_slack.messages("C0GENERAL") == []


def test_unknown_method(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        client.api_call("chat.teleport", json={"channel": "C0GENERAL"})
    assert err.value.response["error"] == "unknown_method"


def test_post_then_fetch_one_message_and_thread(seeded: FakeSlack, client: WebClient) -> None:
    older = seeded.add_message("C0COPY", "older copy", user="U0ALICE")
    posted = client.chat_postMessage(channel="C0COPY", text="Fresh brand copy")
    ts = posted["ts"]
    assert posted["channel"] == "C0COPY"
    assert posted["message"]["bot_id"] == seeded.bot_id
    assert posted["message"]["user"] == seeded.bot_user_id
    newer = seeded.add_message("C0COPY", "newer copy", user="U0BOB")
    assert older < ts < newer

    one = client.conversations_history(channel="C0COPY", latest=ts, inclusive=True, limit=1)
    assert [m["text"] for m in one["messages"]] == ["Fresh brand copy"]
    everything = client.conversations_history(channel="C0COPY")
    assert [m["text"] for m in everything["messages"]] == [
        "newer copy",
        "Fresh brand copy",
        "older copy",
    ]
    page = client.conversations_history(channel="C0COPY", limit=2)
    assert page["has_more"] is True
    rest = client.conversations_history(
        channel="C0COPY", limit=2, cursor=page["response_metadata"]["next_cursor"]
    )
    assert [m["text"] for m in rest["messages"]] == ["older copy"]

    reply = client.chat_postMessage(channel="C0COPY", text="in thread", thread_ts=older)
    human_reply = seeded.add_message("C0COPY", "me too", user="U0BOB", thread_ts=older)
    thread = client.conversations_replies(channel="C0COPY", ts=older)
    assert [m["text"] for m in thread["messages"]] == ["older copy", "in thread", "me too"]
    parent = thread["messages"][0]
    assert parent["reply_count"] == 2
    assert parent["thread_ts"] == older
    assert parent["latest_reply"] == human_reply
    assert thread["messages"][1]["parent_user_id"] == "U0ALICE"
    # a single reply, fetched the way bots do
    single = client.conversations_replies(
        channel="C0COPY", ts=reply["ts"], latest=reply["ts"], oldest=reply["ts"], inclusive=True
    )
    assert [m["text"] for m in single["messages"]] == ["in thread"]
    # replies stay out of the channel history
    assert "in thread" not in [
        m["text"] for m in client.conversations_history(channel="C0COPY")["messages"]
    ]
    with pytest.raises(SlackApiError) as err:
        client.conversations_replies(channel="C0COPY", ts="1.000001")
    assert err.value.response["error"] == "thread_not_found"


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_post_errors_and_channel_names(seeded: FakeSlack, client: WebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0NOPE", text="hi")
    assert err.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0COPY")
    assert err.value.response["error"] == "no_text"
    by_name = client.chat_postMessage(channel="#brand-copy", text="by name")
    assert by_name["channel"] == "C0COPY"
    dm = client.chat_postMessage(channel="U0BOB", text="psst")
    assert dm["channel"].startswith("D")
    assert seeded.messages(dm["channel"])[0]["text"] == "psst"


def test_blocks_form_encoded_and_json_are_decoded(seeded: FakeSlack, client: WebClient) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    client.chat_postMessage(channel="C0COPY", text="hi", blocks=blocks)
    # a form-encoded call carries blocks as a JSON string; the fake decodes it
    client.api_call(
        "chat.postEphemeral",
        data={"channel": "C0COPY", "user": "U0ALICE", "text": "x", "blocks": json.dumps(blocks)},
    )
    post, ephemeral = seeded.calls[-2:]
    assert post.args["blocks"] == blocks
    assert ephemeral.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert ephemeral.args["blocks"] == blocks


def test_ephemeral_update_delete_permalink_reactions(seeded: FakeSlack, client: WebClient) -> None:
    eph = client.chat_postEphemeral(channel="C0COPY", user="U0ALICE", text="only you")
    assert eph["message_ts"]
    assert seeded.ephemerals == [
        {
            "channel": "C0COPY",
            "user": "U0ALICE",
            "text": "only you",
            "message_ts": eph["message_ts"],
        }
    ]

    ts = client.chat_postMessage(channel="C0COPY", text="Working on it…")["ts"]
    updated = client.chat_update(channel="C0COPY", ts=ts, text="Done")
    assert updated["message"]["text"] == "Done"
    assert seeded.message("C0COPY", ts)["text"] == "Done"  # type: ignore[index]
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C0COPY", ts="1.000001", text="x")
    assert err.value.response["error"] == "message_not_found"
    human = seeded.add_message("C0COPY", "mine", user="U0ALICE")
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C0COPY", ts=human, text="x")
    assert err.value.response["error"] == "cant_update_message"

    link = client.chat_getPermalink(channel="C0COPY", message_ts=ts)
    assert link["permalink"] == (
        f"https://{seeded.team_domain}.slack.com/archives/C0COPY/p{ts.replace('.', '')}"
    )

    client.reactions_add(channel="C0COPY", timestamp=human, name="white_check_mark")
    assert seeded.message("C0COPY", human)["reactions"] == [  # type: ignore[index]
        {"name": "white_check_mark", "users": [seeded.bot_user_id], "count": 1}
    ]
    with pytest.raises(SlackApiError) as err:
        client.reactions_add(channel="C0COPY", timestamp=human, name="white_check_mark")
    assert err.value.response["error"] == "already_reacted"
    client.reactions_remove(channel="C0COPY", timestamp=human, name="white_check_mark")
    after = seeded.message("C0COPY", human)
    assert after is not None
    assert not after.get("reactions")

    client.chat_delete(channel="C0COPY", ts=ts)
    assert seeded.message("C0COPY", ts) is None


def test_conversations_users_and_usergroups(seeded: FakeSlack, client: WebClient) -> None:
    info = client.conversations_info(channel="C0COPY")["channel"]
    assert info["name"] == "brand-copy"
    assert info["is_member"] is True
    assert info["is_private"] is False
    members = client.conversations_members(channel="C0COPY")["members"]
    assert members == ["U0ALICE", seeded.bot_user_id]
    secret = client.conversations_info(channel="G0SECRET")["channel"]
    assert secret["is_private"] is True
    assert secret["is_member"] is False
    with pytest.raises(SlackApiError) as err:
        client.conversations_join(channel="G0SECRET")
    assert err.value.response["error"] == "method_not_supported_for_channel_type"
    seeded.add_channel("C0NEWS", "news")
    joined = client.conversations_join(channel="C0NEWS")
    assert joined["channel"]["is_member"] is True
    assert seeded.bot_user_id in client.conversations_members(channel="C0NEWS")["members"]

    alice = client.users_info(user="U0ALICE")["user"]
    assert alice["is_admin"] is True
    assert alice["name"] == "alice"
    assert alice["profile"]["email"] == "alice@example.com"
    assert client.users_info(user=seeded.bot_user_id)["user"]["is_bot"] is True
    with pytest.raises(SlackApiError) as err:
        client.users_info(user="U0NOBODY")
    assert err.value.response["error"] == "user_not_found"

    assert client.usergroups_users_list(usergroup="S0APPROVERS")["users"] == [
        "U0ALICE",
        "U0BOB",
    ]
    with pytest.raises(SlackApiError) as err:
        client.usergroups_users_list(usergroup="S0NONE")
    assert err.value.response["error"] == "no_such_subteam"

    opened = client.conversations_open(users="U0ALICE")
    assert opened["channel"]["id"].startswith("D")


def test_views_open_update_publish(seeded: FakeSlack, client: WebClient) -> None:
    view = {
        "type": "modal",
        "callback_id": "draft_modal",
        "title": {"type": "plain_text", "text": "Draft"},
        "private_metadata": "C0COPY",
        "blocks": [],
    }
    opened = client.views_open(trigger_id="123.456.abc", view=view)["view"]
    assert opened["callback_id"] == "draft_modal"
    assert opened["private_metadata"] == "C0COPY"
    assert seeded.views[opened["id"]]["type"] == "modal"
    [call] = seeded.calls_for("views.open")
    assert call.args["view"]["callback_id"] == "draft_modal"
    assert call.args["trigger_id"] == "123.456.abc"

    updated = client.views_update(view_id=opened["id"], view={**view, "callback_id": "step2"})
    assert updated["view"]["id"] == opened["id"]
    assert seeded.views[opened["id"]]["callback_id"] == "step2"
    with pytest.raises(SlackApiError) as err:
        client.views_update(view_id=opened["id"], view=view, hash="stale-hash")
    assert err.value.response["error"] == "hash_conflict"
    with pytest.raises(SlackApiError) as err:
        client.views_open(trigger_id="", view=view)
    assert err.value.response["error"] == "invalid_trigger_id"

    home = client.views_publish(user_id="U0ALICE", view={"type": "home", "blocks": []})
    assert seeded.home_views["U0ALICE"]["id"] == home["view"]["id"]


def test_files_upload_v2_end_to_end(seeded: FakeSlack, client: WebClient) -> None:
    parent = seeded.add_message("C0COPY", "the report, please", user="U0ALICE")
    result = client.files_upload_v2(
        channel="C0COPY",
        content=b"epoch,loss\n1,0.5\n",
        filename="losses.csv",
        title="Training losses",
        initial_comment="Here is the retraining report",
        thread_ts=parent,
    )
    assert result["file"]["title"] == "Training losses"
    assert [c.method for c in seeded.calls] == [
        "files.getUploadURLExternal",
        "upload",
        "files.completeUploadExternal",
    ]
    assert all(c.ok for c in seeded.calls)
    [uploaded] = seeded.uploaded_files
    assert uploaded.content == b"epoch,loss\n1,0.5\n"
    assert uploaded.filename == "losses.csv"
    assert uploaded.title == "Training losses"
    assert uploaded.channel == "C0COPY"
    assert uploaded.initial_comment == "Here is the retraining report"
    assert uploaded.thread_ts == parent
    shared = seeded.thread("C0COPY", parent)[-1]
    assert shared["text"] == "Here is the retraining report"
    assert shared["files"][0]["id"] == uploaded.id
    # url_private serves the bytes to a token holder
    auth = {"Authorization": f"Bearer {seeded.bot_token}"}
    download = httpx.get(result["file"]["url_private"], headers=auth)
    assert download.content == b"epoch,loss\n1,0.5\n"
    assert httpx.get(result["file"]["url_private"]).status_code == 401


def test_complete_upload_without_upload_fails(seeded: FakeSlack, client: WebClient) -> None:
    file_id = client.files_getUploadURLExternal(filename="a.txt", length=3)["file_id"]
    with pytest.raises(SlackApiError) as err:
        client.files_completeUploadExternal(files=[{"id": file_id}], channel_id="C0COPY")
    assert err.value.response["error"] == "file_not_found"
    assert seeded.uploaded_files == []


def test_response_url_through_webhook_client(fake_slack: FakeSlack) -> None:
    url = fake_slack.response_url("cmd-1")
    answer = WebhookClient(url).send(text="Drafting…", response_type="ephemeral")
    assert answer.status_code == 200
    WebhookClient(url).send(text="Here it is", replace_original=True)
    assert fake_slack.responses("cmd-1") == [
        {"text": "Drafting…", "response_type": "ephemeral"},
        {"text": "Here it is", "replace_original": True},
    ]
    [first, _] = fake_slack.calls_for("response_url")
    assert first.args["response_url_id"] == "cmd-1"
    unknown = WebhookClient(f"{fake_slack.base_url}/response/never-issued").send(text="x")
    assert unknown.status_code == 404


def test_rate_limit_is_retried_by_slack_sdk_handler(fake_slack: FakeSlack) -> None:
    fake_slack.rate_limit("chat.postMessage", times=2, retry_after=0)
    client = WebClient(
        base_url=fake_slack.api_url,
        token=fake_slack.bot_token,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],
    )
    answer = client.chat_postMessage(channel="C0GENERAL", text="eventually")
    assert answer["ok"]
    calls = fake_slack.calls_for("chat.postMessage")
    assert [c.status for c in calls] == [429, 429, 200]
    assert calls[0].response == {"ok": False, "error": "ratelimited"}
    assert len(fake_slack.messages("C0GENERAL")) == 1


def test_rate_limit_without_retry_handler_surfaces(fake_slack: FakeSlack) -> None:
    fake_slack.rate_limit("*", retry_after=7)
    client = WebClient(base_url=fake_slack.api_url, token=fake_slack.bot_token)
    with pytest.raises(SlackApiError) as err:
        client.auth_test()
    assert err.value.response.status_code == 429
    assert (
        err.value.response.headers["Retry-After"] == ["7"]
        or err.value.response.headers["Retry-After"] == "7"
    )
    assert client.auth_test()["ok"]


def test_fail_and_reset(fake_slack: FakeSlack, client: WebClient) -> None:
    fake_slack.fail("chat.postMessage", error="channel_not_found", times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as err:
            client.chat_postMessage(channel="C0GENERAL", text="x")
        assert err.value.response["error"] == "channel_not_found"
    assert client.chat_postMessage(channel="C0GENERAL", text="x")["ok"]
    fake_slack.fail("chat.postMessage")
    fake_slack.reset()
    assert fake_slack.calls == []
    assert client.chat_postMessage(channel="C0GENERAL", text="x")["ok"]
    assert len(fake_slack.messages("C0GENERAL")) == 2  # the workspace survives reset()


def test_custom_handler(fake_slack: FakeSlack, client: WebClient) -> None:
    def bookmarks(call: Call) -> dict[str, object]:
        if call.args.get("channel_id") != "C0GENERAL":
            raise SlackError("channel_not_found")
        return {"bookmarks": [{"title": "Brand book"}]}

    fake_slack.handle("bookmarks.list", bookmarks)
    answer = client.bookmarks_list(channel_id="C0GENERAL")
    assert answer["bookmarks"] == [{"title": "Brand book"}]
    with pytest.raises(SlackApiError):
        client.bookmarks_list(channel_id="C0OTHER")
    fake_slack.handle("bookmarks.list", None)
    with pytest.raises(SlackApiError) as err:
        client.bookmarks_list(channel_id="C0GENERAL")
    assert err.value.response["error"] == "unknown_method"


def test_wait_for_blocks_until_calls_arrive(fake_slack: FakeSlack, client: WebClient) -> None:
    def later() -> None:
        time.sleep(0.2)
        client.chat_postMessage(channel="C0GENERAL", text="one")
        client.chat_postMessage(channel="C0GENERAL", text="two")

    worker = threading.Thread(target=later)
    worker.start()
    calls = fake_slack.wait_for("chat.postMessage", count=2, timeout=5)
    worker.join()
    assert [c.args["text"] for c in calls] == ["one", "two"]
    with pytest.raises(TimeoutError, match=r"chat\.update"):
        fake_slack.wait_for("chat.update", timeout=0.1)


def test_async_web_client(fake_slack: FakeSlack) -> None:
    async def run() -> tuple[str, list[str]]:
        client = AsyncWebClient(base_url=fake_slack.api_url, token=fake_slack.bot_token)
        posted = await client.chat_postMessage(channel="C0GENERAL", text="async hello")
        history = await client.conversations_history(channel="C0GENERAL")
        await client.session.close() if client.session else None
        return posted["ts"], [m["text"] for m in history["messages"]]

    ts, texts = asyncio.run(run())
    assert texts == ["async hello"]
    assert fake_slack.message("C0GENERAL", ts) is not None


def test_concurrent_clients(fake_slack: FakeSlack) -> None:
    client = fake_slack.client()

    def post(i: int) -> str:
        return str(client.chat_postMessage(channel="C0GENERAL", text=f"n{i}")["ts"])

    with ThreadPoolExecutor(max_workers=32) as pool:
        stamps = list(pool.map(post, range(200)))
    assert len(set(stamps)) == 200
    assert len(fake_slack.calls_for("chat.postMessage")) == 200
    assert len(fake_slack.messages("C0GENERAL")) == 200
