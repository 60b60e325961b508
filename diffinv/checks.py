"""Value checks that never stall an accelerator.

``bool(tensor)`` inside a sampling loop is a host-device synchronisation per call on a GPU: the host waits for every
queued kernel before it can branch. ``require`` states the same check without waiting: on the CPU it raises the
project's own error at once (a host check costs nothing there); on an accelerator it queues an asynchronous device
assertion (``torch._assert_async``), so a violation stops the job at the next synchronisation point, with the
message below printed by the device runtime.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def require(ok: Tensor, message: str | Callable[[], str], error: type[Exception] = ValueError) -> None:
    """Fail with ``error(message)`` unless every element of the boolean tensor ``ok`` is true. ``message`` may be a
    callable, evaluated only on failure (e.g. to quote the offending values)."""
    ok = ok.all()
    if ok.device.type == "cpu":
        try:
            torch._assert_async(ok)
        except RuntimeError:
            raise error(message() if callable(message) else message) from None
    else:
        # a callable message would need the values on the host: the device assertion names the check instead
        torch._assert_async(ok, message if isinstance(message, str) else f"diffinv: {error.__name__} in a value check")
