import json
import logging

from bot.observability import JsonFormatter, Redactor


def test_json_logs_carry_slack_ids_and_never_secrets() -> None:
    redactor = Redactor(["s3cr3t-signing"])
    record = logging.LogRecord("brandbot", logging.ERROR, __file__, 1,
                               "token xoxb-123-abc and %s", ("s3cr3t-signing",), None)  # fmt: skip
    record.channel_id = "C0123"
    record.event_id = "Ev1"
    try:
        raise ValueError("bad xapp-1-XYZ")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert redactor.filter(record)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["channel_id"] == "C0123" and doc["event_id"] == "Ev1"
    text = json.dumps(doc)
    for secret in ("xoxb-123-abc", "s3cr3t-signing", "xapp-1-XYZ"):
        assert secret not in text
    assert "[redacted]" in doc["message"] and "ValueError" in doc["error"]
