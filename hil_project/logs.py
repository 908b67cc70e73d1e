"""Log lines as JSON, one per line: time, level, logger, message, and where it was written (tenant, run, node, the
trace and span ids), for a log pipeline to index. Personal data (tools.pii: emails, phones, cards, IBANs, national
ids) is masked in the message and the traceback, whatever wrote it; secrets never reach a log line in the first
place (tools.services never puts a value in a message)."""

import json
import logging
import time

from core import tracing
from tools import pii


class JsonFormatter(logging.Formatter):
    converter = time.gmtime  # times in UTC, as the "Z" says

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "message": pii.masked(record.getMessage())}
        line.update(tracing.ids())
        line.update(tracing.log_context.get())
        if record.exc_info:
            line["error"] = pii.masked(self.formatException(record.exc_info))
        return json.dumps(line, default=str)
