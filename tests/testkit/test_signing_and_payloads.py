"""Signing matches slack_sdk's verifier; payload builders encode the way Slack does."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs

from slack_sdk.signature import SignatureVerifier

from bot.testkit import payloads
from bot.testkit.signing import sign, sign_bad, sign_stale, signature

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def test_signature_matches_slack_documented_example() -> None:
    # The worked example of Slack's "Verifying requests from Slack" guide.
    body = (
        "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
        "channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
        "command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
        "commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
        "trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    assert signature(SECRET, body, 1531420618) == (
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    )


def test_good_signature_is_accepted_by_slack_sdk() -> None:
    verifier = SignatureVerifier(SECRET)
    body, _ = payloads.encode(payloads.url_verification("abc"))
    headers = sign(SECRET, body)
    assert verifier.is_valid_request(body, headers)
    assert verifier.is_valid_request(body.encode(), sign(SECRET, body.encode()))
    assert int(headers["X-Slack-Request-Timestamp"]) >= int(time.time()) - 1


def test_bad_and_stale_signatures_are_refused() -> None:
    verifier = SignatureVerifier(SECRET)
    body = '{"type":"url_verification","challenge":"x"}'
    assert not verifier.is_valid_request(body, sign_bad(SECRET, body))
    assert not verifier.is_valid_request(body, sign_stale(SECRET, body))
    assert not verifier.is_valid_request(body + " ", sign(SECRET, body))
    stale = sign_stale(SECRET, body)
    assert int(stale["X-Slack-Request-Timestamp"]) < time.time() - 300


def test_slash_command_is_a_flat_form() -> None:
    command = payloads.slash_command(
        "/draft", "a tagline for socks", "U0ALICE", "C0COPY", "http://x/response/1"
    )
    body, content_type = payloads.encode(command)
    assert content_type == "application/x-www-form-urlencoded"
    fields = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
    assert list(fields) == [
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "user_id",
        "user_name",
        "command",
        "text",
        "api_app_id",
        "is_enterprise_install",
        "response_url",
        "trigger_id",
    ]
    assert fields["command"] == "/draft"
    assert fields["text"] == "a tagline for socks"
    assert fields["is_enterprise_install"] == "false"
    assert payloads.envelope_type(command) == "slash_commands"


def test_interactive_payloads_are_payload_json_forms() -> None:
    action = payloads.block_actions(
        "U0ALICE", "approve", "42", "C0COPY", "1700000000.000100", "http://x/response/2"
    )
    body, content_type = payloads.encode(action)
    assert content_type == "application/x-www-form-urlencoded"
    decoded = json.loads(parse_qs(body)["payload"][0])
    assert decoded["type"] == "block_actions"
    assert decoded["actions"][0]["action_id"] == "approve"
    assert decoded["actions"][0]["value"] == "42"
    assert decoded["container"]["message_ts"] == "1700000000.000100"
    assert decoded["user"]["id"] == "U0ALICE"
    assert payloads.envelope_type(action) == "interactive"

    submission = payloads.view_submission(
        "U0ALICE", "draft_modal", {"brief": {"text": "socks"}}, private_metadata="C0COPY"
    )
    assert submission["view"]["state"]["values"] == {
        "brief": {"text": {"type": "plain_text_input", "value": "socks"}}
    }
    assert submission["view"]["private_metadata"] == "C0COPY"
    shortcut = payloads.message_shortcut(
        "U0ALICE", "save_example", "C0COPY", {"type": "message", "ts": "1.000200", "text": "x"}
    )
    assert shortcut["type"] == "message_action"
    assert shortcut["message_ts"] == "1.000200"
    assert payloads.envelope_type(submission) == payloads.envelope_type(shortcut) == "interactive"


def test_events_are_json_event_callbacks() -> None:
    event = payloads.reaction_added("U0ALICE", "white_check_mark", "C0COPY", "1.000100", "U0BOB")
    wrapped = payloads.event_callback(event, event_id="Ev0001")
    body, content_type = payloads.encode(wrapped)
    assert content_type == "application/json"
    decoded = json.loads(body)
    assert decoded["type"] == "event_callback"
    assert decoded["event_id"] == "Ev0001"
    assert decoded["event"]["item"] == {"type": "message", "channel": "C0COPY", "ts": "1.000100"}
    assert decoded["authorizations"][0]["user_id"] == payloads.BOT_USER_ID
    assert payloads.envelope_type(wrapped) == "events_api"
    assert payloads.envelope_type(payloads.url_verification()) == "events_api"

    reply = payloads.message("C0COPY", "U0BOB", "me too", thread_ts="1.000100")
    assert reply["thread_ts"] == "1.000100"
    assert reply["parent_user_id"] == "U0BOB"
    assert reply["channel_type"] == "channel"
    bot = payloads.message("C0COPY", payloads.BOT_USER_ID, "hi", bot_id=payloads.BOT_ID)
    assert bot["bot_id"] == payloads.BOT_ID
    assert "client_msg_id" not in bot
    changed = payloads.message_changed("C0COPY", "1.000100", "new", "U0BOB", "old")
    assert changed["subtype"] == "message_changed"
    assert changed["message"]["text"] == "new"
    assert changed["previous_message"]["text"] == "old"
    deleted = payloads.message_deleted("C0COPY", "1.000100")
    assert deleted["deleted_ts"] == "1.000100"
    mention = payloads.app_mention("C0COPY", "U0BOB", "help")
    assert mention["text"] == f"<@{payloads.BOT_USER_ID}> help"
    joined = payloads.member_joined_channel("U0BOB", "C0COPY")
    assert joined["type"] == "member_joined_channel"
    removed = payloads.reaction_removed("U0ALICE", "x", "C0COPY", "1.000100")
    assert removed["type"] == "reaction_removed"
    assert "item_user" not in removed


def test_timestamps_are_unique_and_increasing() -> None:
    stamps = [payloads.new_ts() for _ in range(500)]
    assert stamps == sorted(stamps, key=float)
    assert len(set(stamps)) == len(stamps)
