"""Loggers for the CNI executables that import :mod:`logging` only when a record is emitted.

A standalone plugin run has no logging configured (stderr, WARNING), so debug/info records
are dropped without loading the module — it costs several milliseconds of start-up, and
start-up time is a feature (STYLE §6). Where logging is already loaded (the CNI daemon, tests,
a ``logFile`` in the config), every call goes straight to the real logger.
"""
from __future__ import annotations

import sys


class LazyLogger:
    __slots__ = ("name", "_real")

    def __init__(self, name: str) -> None:
        self.name = name
        self._real = None

    def _logger(self):
        if self._real is None:
            import logging
            if not logging.root.handlers:
                logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                                    format="%(name)s %(levelname)s %(message)s")
            self._real = logging.getLogger(self.name)
        return self._real

    def debug(self, msg: str, *args: object) -> None:
        if "logging" in sys.modules:
            self._logger().debug(msg, *args)

    def info(self, msg: str, *args: object) -> None:
        if "logging" in sys.modules:
            self._logger().info(msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self._logger().warning(msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self._logger().error(msg, *args)

    def exception(self, msg: str, *args: object) -> None:
        self._logger().exception(msg, *args)


def getLogger(name: str) -> LazyLogger:  # noqa: N802 - mirrors logging.getLogger
    return LazyLogger(name)
