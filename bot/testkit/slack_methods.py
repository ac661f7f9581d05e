"""The Web API methods the fake Slack answers (``auth.test``, ``chat.*``, ``conversations.*``,
``users.*``, ``reactions.*``, ``views.*``, ``files.*``, ``apps.connections.open``)."""

from __future__ import annotations

import copy
import mimetypes
import time
import uuid
from decimal import Decimal
from typing import Any

from bot.testkit.blockkit import view_problems
from bot.testkit.payloads import new_id, new_ts
from bot.testkit.slack_state import (
    Call,
    SlackError,
    SlackState,
    UploadedFile,
    _as_list,
    _bool,
    _decimal,
    _page,
    _required,
)


class WebApiMethods(SlackState):
    """Each method takes the call and the acting user and answers Slack-shaped JSON."""

    # -- Web API methods ---------------------------------------------------------------------

    def _auth_test(self, call: Call, actor: str) -> dict[str, Any]:
        user = self._users.get(actor, {})
        answer = {
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team_name,
            "user": user.get("name", actor),
            "team_id": self.team_id,
            "user_id": actor,
        }
        if self._tokens[call.token or ""].kind == "bot":
            answer["bot_id"] = self.bot_id
        answer["is_enterprise_install"] = False
        return answer

    def _team_info(self, call: Call, actor: str) -> dict[str, Any]:
        return {
            "team": {
                "id": self.team_id,
                "name": self.team_name,
                "domain": self.team_domain,
                "email_domain": "",
                "icon": {"image_default": True},
                "url": f"https://{self.team_domain}.slack.com/",
            }
        }

    def _chat_post_message(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"), actor)
        if not (args.get("text") or args.get("blocks") or args.get("attachments")):
            raise SlackError("no_text")
        message = self._new_message(call, actor)
        thread_ts = args.get("thread_ts")
        if thread_ts:
            message["thread_ts"] = str(thread_ts)
            if _bool(args.get("reply_broadcast")):
                message["subtype"] = "thread_broadcast"
        self._store(channel, message)
        return {"channel": channel, "ts": message["ts"], "message": copy.deepcopy(message)}

    def _chat_post_ephemeral(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"), actor)
        user = str(_required(args, "user", "user_not_found"))
        if not (args.get("text") or args.get("blocks") or args.get("attachments")):
            raise SlackError("no_text")
        ts = new_ts()
        ephemeral = {
            "channel": channel,
            "user": user,
            "text": str(args.get("text") or ""),
            "message_ts": ts,
        }
        for key in ("blocks", "attachments", "thread_ts"):
            if args.get(key):
                ephemeral[key] = args[key]
        self._ephemerals.append(ephemeral)
        return {"message_ts": ts}

    def _chat_update(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"), actor)
        message = self._message_or_error(channel, args.get("ts"))
        if message.get("user") != actor:
            raise SlackError("cant_update_message")
        if "text" in args:
            message["text"] = str(args.get("text") or "")
        for key in ("blocks", "attachments", "metadata"):
            if key in args:
                message[key] = args[key]
        message["edited"] = {"user": actor, "ts": new_ts()}
        return {
            "channel": channel,
            "ts": message["ts"],
            "text": message.get("text", ""),
            "message": copy.deepcopy(message),
        }

    def _chat_delete(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"), actor)
        message = self._message_or_error(channel, args.get("ts"))
        if message.get("user") != actor:
            raise SlackError("cant_delete_message")
        self._messages[channel].remove(message)
        return {"channel": channel, "ts": message["ts"]}

    def _chat_get_permalink(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"), actor)
        message = self._message_or_error(channel, args.get("message_ts"))
        return {"channel": channel, "permalink": self._permalink(channel, message)}

    def _window(self, messages: list[dict[str, Any]], args: dict[str, Any]) -> list[Any]:
        inclusive = _bool(args.get("inclusive"))
        latest = args.get("latest")
        oldest = args.get("oldest")
        upper = _decimal(latest, "invalid_ts_latest") if latest not in (None, "") else None
        lower = _decimal(oldest, "invalid_ts_oldest") if oldest not in (None, "") else None
        out = []
        for message in messages:
            ts = Decimal(str(message["ts"]))
            if upper is not None and (ts > upper or (ts == upper and not inclusive)):
                continue
            if lower is not None and (ts < lower or (ts == lower and not inclusive)):
                continue
            out.append(message)
        return out

    def _conversations_history(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"))
        top = [
            m
            for m in self._messages.get(channel, [])
            if not self._is_reply(m) or m.get("subtype") == "thread_broadcast"
        ]
        chosen = list(reversed(self._window(top, args)))
        page, cursor = _page(chosen, args, 100)
        return {
            "messages": copy.deepcopy(page),
            "has_more": bool(cursor),
            "pin_count": 0,
            "channel_actions_ts": None,
            "channel_actions_count": 0,
            "response_metadata": {"next_cursor": cursor},
        }

    def _conversations_replies(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"))
        message = self._find(channel, str(_required(args, "ts", "thread_not_found")))
        if message is None:
            raise SlackError("thread_not_found")
        root = str(message.get("thread_ts") or message["ts"])
        thread = self._thread(channel, root) or [message]
        page, cursor = _page(self._window(thread, args), args, 1000)
        return {
            "messages": copy.deepcopy(page),
            "has_more": bool(cursor),
            "response_metadata": {"next_cursor": cursor},
        }

    def _conversations_info(self, call: Call, actor: str) -> dict[str, Any]:
        channel = self._channel_id(call.args.get("channel"))
        return {"channel": self._channel_object(channel, actor)}

    def _conversations_members(self, call: Call, actor: str) -> dict[str, Any]:
        channel = self._channel_id(call.args.get("channel"))
        page, cursor = _page(list(self._members.get(channel, [])), call.args, 100)
        return {"members": page, "response_metadata": {"next_cursor": cursor}}

    def _conversations_join(self, call: Call, actor: str) -> dict[str, Any]:
        channel = self._channel_id(call.args.get("channel"))
        info = self._channels[channel]
        if info["is_private"] or info["is_im"]:
            raise SlackError("method_not_supported_for_channel_type")
        answer: dict[str, Any] = {}
        if actor in self._members.get(channel, []):
            answer["warning"] = "already_in_channel"
            answer["response_metadata"] = {"warnings": ["already_in_channel"]}
        self.add_member(channel, actor)
        return {"channel": self._channel_object(channel, actor), **answer}

    def _conversations_open(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        if args.get("channel"):
            channel = self._channel_id(args["channel"])
            return {"no_op": True, "already_open": True, "channel": {"id": channel}}
        users = _as_list(args.get("users"))
        if len(users) != 1:
            raise SlackError("users_list_not_supplied" if not users else "not_supported")
        if users[0] not in self._users:
            raise SlackError("user_not_found")
        channel, created = self._open_im(users[0], actor)
        answer: dict[str, Any] = {"channel": {"id": channel}}
        if not created:
            answer.update({"no_op": True, "already_open": True})
        return answer

    def _users_info(self, call: Call, actor: str) -> dict[str, Any]:
        user = self._users.get(str(call.args.get("user") or ""))
        if user is None:
            raise SlackError("user_not_found")
        return {"user": copy.deepcopy(user)}

    def _usergroups_users_list(self, call: Call, actor: str) -> dict[str, Any]:
        users = self._usergroups.get(str(call.args.get("usergroup") or ""))
        if users is None:
            raise SlackError("no_such_subteam")
        return {"users": list(users)}

    def _reaction_target(self, call: Call, actor: str) -> tuple[dict[str, Any], str]:
        args = call.args
        channel = self._channel_id(args.get("channel"))
        message = self._message_or_error(channel, args.get("timestamp"))
        name = str(_required(args, "name", "invalid_name")).strip(":")
        return message, name

    def _reactions_add(self, call: Call, actor: str) -> dict[str, Any]:
        message, name = self._reaction_target(call, actor)
        reactions = message.setdefault("reactions", [])
        reaction = next((r for r in reactions if r["name"] == name), None)
        if reaction is None:
            reaction = {"name": name, "users": [], "count": 0}
            reactions.append(reaction)
        if actor in reaction["users"]:
            raise SlackError("already_reacted")
        reaction["users"].append(actor)
        reaction["count"] = len(reaction["users"])
        return {}

    def _reactions_remove(self, call: Call, actor: str) -> dict[str, Any]:
        message, name = self._reaction_target(call, actor)
        reactions = message.get("reactions", [])
        reaction = next((r for r in reactions if r["name"] == name), None)
        if reaction is None or actor not in reaction["users"]:
            raise SlackError("no_reaction")
        reaction["users"].remove(actor)
        reaction["count"] = len(reaction["users"])
        if not reaction["users"]:
            reactions.remove(reaction)
        return {}

    def _view_object(self, spec: Any, view_id: str | None = None) -> dict[str, Any]:
        if not isinstance(spec, dict) or not spec.get("type"):
            raise SlackError("invalid_arguments")
        view_id = view_id or new_id("V")
        return {
            "id": view_id,
            "team_id": self.team_id,
            "type": spec["type"],
            "blocks": spec.get("blocks", []),
            "private_metadata": spec.get("private_metadata", ""),
            "callback_id": spec.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{uuid.uuid4().hex[:8]}",
            "title": spec.get("title"),
            "clear_on_close": bool(spec.get("clear_on_close", False)),
            "notify_on_close": bool(spec.get("notify_on_close", False)),
            "close": spec.get("close"),
            "submit": spec.get("submit"),
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": self.api_app_id,
            "external_id": spec.get("external_id", ""),
            "app_installed_team_id": self.team_id,
            "bot_id": self.bot_id,
        }

    def _views_open(self, call: Call, actor: str) -> dict[str, Any]:
        _required(call.args, "trigger_id", "invalid_trigger_id")
        view = self._view_object(call.args.get("view"))
        self._views[view["id"]] = view
        return {"view": copy.deepcopy(view)}

    def _views_update(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        view_id = args.get("view_id")
        if not view_id and args.get("external_id"):
            view_id = next(
                (k for k, v in self._views.items() if v["external_id"] == args["external_id"]),
                None,
            )
        current = self._views.get(str(view_id or ""))
        if current is None:
            raise SlackError("not_found")
        if args.get("hash") and args["hash"] != current["hash"]:
            raise SlackError("hash_conflict")
        view = self._view_object(args.get("view"), current["id"])
        view["root_view_id"] = current["root_view_id"]
        self._views[current["id"]] = view
        return {"view": copy.deepcopy(view)}

    def _views_publish(self, call: Call, actor: str) -> dict[str, Any]:
        """Publishes a Home view, refused (``invalid_arguments``) past Slack's limits."""
        user = str(_required(call.args, "user_id", "invalid_arguments"))
        if user not in self._users:
            raise SlackError("user_not_found")
        spec = call.args.get("view")
        if not isinstance(spec, dict) or spec.get("type") != "home" or view_problems(spec):
            raise SlackError("invalid_arguments")
        for block in spec.get("blocks") or []:
            if block.get("type") == "image" and "slack_file" in block:
                self._shown_file(block["slack_file"])
        previous = self._home_views.get(user)
        view = self._view_object(call.args.get("view"), previous["id"] if previous else None)
        self._home_views[user] = view
        return {"view": copy.deepcopy(view)}

    def _shown_file(self, ref: dict[str, Any]) -> None:
        """A file an image block may show, as Slack checks it: uploaded (by id, ``url_private``
        or permalink), an image, and shared somewhere (an unshared file is its uploader's
        alone); else ``invalid_arguments``."""
        uploads = [u for u in self._files.values() if u.completed]
        ref_url = str(ref.get("url") or "")
        match = [u for u in uploads if u.id == ref.get("id") or (ref_url and ref_url in (
            self._file_object(u)["url_private"], self._file_object(u)["permalink"]))]  # fmt: skip
        if not match:
            raise SlackError("invalid_arguments")
        upload = match[0]
        image = upload.filename.rsplit(".", 1)[-1].lower() in ("png", "jpg", "jpeg", "gif")
        if not image or not (upload.channel or upload.channels):
            raise SlackError("invalid_arguments")

    def _files_get_upload_url(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        filename = str(_required(args, "filename"))
        try:
            length = int(_required(args, "length"))
        except ValueError:
            raise SlackError("invalid_arguments") from None
        file_id = new_id("F")
        self._files[file_id] = UploadedFile(
            id=file_id,
            filename=filename,
            length=length,
            user=actor,
            title=filename,
            alt_txt=args.get("alt_txt") or None,
            snippet_type=args.get("snippet_type") or None,
        )
        return {"upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    def _file_object(self, upload: UploadedFile) -> dict[str, Any]:
        ext = upload.filename.rsplit(".", 1)[-1].lower() if "." in upload.filename else "binary"
        mime = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
        url = f"{self.base_url}/files/{upload.id}/{upload.filename}"
        shared = [c for c in [upload.channel, *upload.channels] if c]
        obj: dict[str, Any] = {
            "id": upload.id,
            "created": upload.created,
            "timestamp": upload.created,
            "name": upload.filename,
            "title": upload.title,
            "mimetype": mime,
            "filetype": ext,
            "pretty_type": ext.upper(),
            "user": upload.user,
            "user_team": self.team_id,
            "editable": False,
            "size": len(upload.content),
            "mode": "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": True,
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": url,
            "url_private_download": url,
            "permalink": f"https://{self.team_domain}.slack.com/files/{upload.user}/{upload.id}/"
            f"{upload.filename}",
            "channels": list(dict.fromkeys(shared)),
            "groups": [],
            "ims": [],
            "comments_count": 0,
        }
        if upload.alt_txt:
            obj["alt_txt"] = upload.alt_txt
        return obj

    def _files_complete_upload(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        specs = args.get("files")
        if not isinstance(specs, list) or not specs:
            raise SlackError("invalid_arguments")
        channel_arg = args.get("channel_id") or args.get("channel")
        channel = self._channel_id(channel_arg, actor) if channel_arg else None
        channels = [self._channel_id(c, actor) for c in _as_list(args.get("channels"))]
        uploads: list[UploadedFile] = []
        for spec in specs:
            upload = self._files.get(str(spec.get("id") if isinstance(spec, dict) else ""))
            if upload is None or upload.data is None or upload.completed:
                raise SlackError("file_not_found")
            uploads.append(upload)
        for upload, spec in zip(uploads, specs, strict=True):
            upload.completed = True
            upload.title = str(spec.get("title") or upload.filename)
            upload.channel = channel
            upload.channels = channels
            upload.initial_comment = args.get("initial_comment") or None
            upload.thread_ts = args.get("thread_ts") or None
        objects = [self._file_object(u) for u in uploads]
        for target in [c for c in [channel, *channels] if c]:
            message = self._new_message(call, actor)
            message["text"] = str(args.get("initial_comment") or "")
            message["files"] = copy.deepcopy(objects)
            message["upload"] = True
            if args.get("thread_ts"):
                message["thread_ts"] = str(args["thread_ts"])
            self._store(target, message)
        return {"files": objects}

    def _apps_connections_open(self, call: Call, actor: str) -> dict[str, Any]:
        if self._socket_mode is None:
            raise SlackError("socket_mode_not_enabled")
        ticket = uuid.uuid4()
        return {"url": f"{self._socket_mode.url}?ticket={ticket}&app_id={self.api_app_id}"}
