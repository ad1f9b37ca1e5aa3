"""``raydrift`` as the CLI runs it, with a checkpoint write held open for the stop tests.

With ``RD_STOP_PHASE=checkpoint`` the first checkpoint written after batch 0 is held (its temporary
file written, not yet renamed over ``state.pt``) and ``RD_STOP_MARKER`` is written, so a signal
arrives in the middle of the write. Otherwise this is ``raydrift`` itself.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

if os.environ.get("RD_STOP_PHASE") == "checkpoint":
    _save = torch.save

    def _held_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        _save(obj, f, *args, **kwargs)
        if "checkpoint" in str(f) and isinstance(obj, dict) and int(obj.get("processed") or 0) > 0:
            Path(os.environ["RD_STOP_MARKER"]).write_text(f"checkpoint {f}\n")
            time.sleep(300)

    torch.save = _held_save

from raydrift.cli import main  # noqa: E402

sys.exit(main())
