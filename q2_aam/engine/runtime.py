"""What a run needs from its process: a device, seeds, and temporary folders that are
removed however the run ends (an error, Ctrl-C, SIGTERM; after SIGKILL, by the next run)."""
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed):
    """Seed torch and numpy so that two CPU runs give bit-identical weights."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def resolve_device(name):
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU on this "
                         "machine (torch.cuda.is_available() is False). Use device 'cpu', "
                         "or 'auto' to take a GPU only when there is one.")
    if name not in ('cpu', 'cuda'):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {name!r}.")
    return torch.device(name)


CHECKPOINT_FROM = 128   # embedding_dim x attention_layers from which CPU training checkpoints


def autocast_settings(device):
    """bfloat16 autocast on a GPU (tensor cores), full precision on the CPU."""
    return dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda')


def checkpoint_by_default(cfg, device):
    """Recompute the ASV encoder's layers in the backward pass (less memory, more time)?

    On the CPU for models from 128 x 1 (the public AAM's 128 x 4 needs it to stay within a
    laptop's memory). Not for the small default (32 x 1): there it costs time and saves no
    measurable memory. Not on a GPU, where memory is ample.
    """
    return device.type == 'cpu' and cfg.embedding_dim * cfg.asv_layers >= CHECKPOINT_FROM


TEMP_PREFIX = 'q2-aam-tensorboard-'   # + the owning process's ID + '-' + random


def sweep_stale_folders(root=None):
    """Remove temporary event folders whose process is gone (killed with SIGKILL, which no
    handler sees), so that they do not accumulate in $TMPDIR. Returns the removed paths."""
    import shutil
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f'{TEMP_PREFIX}*'):
        pid = path.name[len(TEMP_PREFIX):].split('-', 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # another user's process: alive
        return True
    return True


class terminate_as_interrupt:
    """While training, SIGTERM (a job scheduler's stop, `kill`) unwinds like Ctrl-C, so
    that temporary folders are removed; the previous handler is restored afterwards.
    Only in the main thread, and only where nobody else handles SIGTERM."""

    def __enter__(self):
        import signal
        import threading
        self.previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            def interrupt(signum, frame):
                raise KeyboardInterrupt('SIGTERM')
            self.previous = signal.signal(signal.SIGTERM, interrupt)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            import signal
            signal.signal(signal.SIGTERM, self.previous)
        return False


def read_files(directory):
    """Every file under ``directory``, relative path -> bytes (a run's event files)."""
    root = Path(directory)
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob('*')) if p.is_file()}
