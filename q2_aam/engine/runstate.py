"""A checkpoint folder that lets an interrupted training run resume where it stopped.

Layout (one folder per ensemble member, ``member-<i>/``, or the folder itself for one model):
``run.json`` (what the run was started with: its settings and a fingerprint of its data),
``best_model.pt`` and ``last_checkpoint.pt`` (written by the trainer every epoch),
``validation-epoch-<n>.png`` (the validation figure each time validation improves),
``tensorboard/`` (live logs) and ``finished.pt`` (a finished member's result, so that a
rerun skips it). Everything is read back with ``weights_only=True``.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

RUN_FILE = 'run.json'
FINISHED = 'finished.pt'
LAST = 'last_checkpoint.pt'


LOCK_FILE = 'run.lock'


def digest(*parts):
    """A short hash of strings and bytes."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
    return h.hexdigest()[:16]


class FolderLock:
    """An exclusive lock on a checkpoint folder for one run's life. The kernel drops it
    when the process ends, however it ends (a kill -9 included), so a dead run's lock is
    never stale: the next run simply takes it."""

    def __init__(self, folder):
        import fcntl
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / LOCK_FILE
        self.handle = open(self.path, 'a+')
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or 'another process'
            self.handle.close()
            raise ValueError(
                f'checkpoint_dir {str(self.folder)!r} is in use by a run that is still going '
                f'({holder}). Two runs must not share a checkpoint folder: wait for that run '
                'to end (rerunning then resumes it), or give another checkpoint_dir.') \
                from None
        import os
        import socket
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f'process {os.getpid()} on {socket.gethostname()}\n')
        self.handle.flush()

    def release(self):
        if not self.handle.closed:
            self.handle.close()           # closing drops the lock


def lock(folder):
    return FolderLock(folder)


class held:
    """``with held(lock):`` releases the lock (or nothing, for None) when the block ends."""

    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        return self.lock

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
        return False


def fingerprint(data):
    """Short hashes of what a run trains on: the same command on other data must not
    resume from this folder."""
    rows = [np.concatenate([a, r]) for a, r in zip(data.asvs, data.reads)]
    return {
        'samples': digest('\t'.join(data.sample_ids)),
        'features': digest('\t'.join(data.feature_ids), data.tokens.numpy().tobytes()),
        'counts': digest(*(np.asarray(r, np.float64).tobytes() for r in rows)),
        'targets': None if data.targets is None else digest(
            np.asarray(data.targets).astype(str).tobytes()),
        'distances': None if data.distances is None else digest(data.distances_fingerprint()),
    }


def fingerprint_state(state):
    """A short hash of a state dict (a pretrained encoder a run starts from)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def prepare(folder, record):
    """Create the folder, or check that it was started by the same run. ``record`` is a
    JSON-able dict (settings and data fingerprint); any difference is an error naming it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f'checkpoint_dir {str(folder)!r} is a file, not a folder. Give the '
                         'path of a folder (it is created if missing).')
    record = json.loads(json.dumps(record))          # as it will read back
    path = folder / RUN_FILE
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except json.JSONDecodeError:
            before = {}
        differ = sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))
        if differ:
            shown = '; '.join(f'{k}: {before.get(k)!r} then, {record.get(k)!r} now'
                              for k in differ[:6])
            raise ValueError(
                f'checkpoint_dir {str(folder)!r} holds a run with other settings or data '
                f'({len(differ)} differ: {shown}). Rerun with the same inputs and settings to '
                'resume it, or give another (or an empty) checkpoint_dir for a new run.')
        return True
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True))
    return False


def member_folder(folder, member, members):
    return Path(folder) / f'member-{member}' if members > 1 else Path(folder)


def resume_point(folder):
    """The last epoch's full state to resume from, if an earlier run left one."""
    path = Path(folder) / LAST
    return path if path.is_file() else None


def save_finished(folder, result):
    """A finished member's result, as plain tensors, lists and strings."""
    payload = {
        'state_dict': result.state_dict,
        'history': result.history.to_dict(orient='list'),
        **table_payload(result.validation),
        'best_epoch': int(result.best_epoch), 'epochs_run': int(result.epochs_run),
        'target_mean': result.target_mean, 'target_std': result.target_std,
        'tensorboard': {k: torch.frombuffer(bytearray(v), dtype=torch.uint8)
                        for k, v in result.tensorboard.items()},
        'train_seconds': float(result.train_seconds),
        'train_samples_per_second': float(result.train_samples_per_second),
    }
    atomic_save(payload, Path(folder) / FINISHED)


def atomic_save(obj, path):
    """torch.save to a temporary file beside ``path``, then a rename: a reader never sees a
    half-written file. A failed write (a full disk, a read-only folder) leaves no temporary
    file and says which path failed and why; the run can be resumed once there is room."""
    import os
    import tempfile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    os.close(handle)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise write_error(path, e) from None


def write_error(path, error):
    """An OSError that names the file that could not be written and the likely cause."""
    import errno
    import shutil
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        free = None
    code = getattr(error, 'errno', None)
    if code == errno.ENOSPC or (free is not None and free < 64 * 2 ** 20):
        cause = f'the disk is full ({free or 0:,} bytes free)'
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = 'the folder is not writable'
    else:
        cause = f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'
    return OSError(code or errno.EIO,
                   f'Could not write {str(path)!r}: {cause}. Nothing half-written was left '
                   'behind. Free some space or choose a writable folder, then run the same '
                   'command again: it resumes from the last epoch saved.')


def load_finished(folder):
    """The fields of the TrainResult save_finished wrote, or None."""
    path = Path(folder) / FINISHED
    if not path.is_file():
        return None
    p = torch.load(path, map_location='cpu', weights_only=True)
    return dict(
        state_dict=p['state_dict'], history=pd.DataFrame(p['history']),
        validation=table_from_payload(p),
        best_epoch=p['best_epoch'], epochs_run=p['epochs_run'], target_mean=p['target_mean'],
        target_std=p['target_std'],
        tensorboard={k: bytes(v.numpy().tobytes()) for k, v in p['tensorboard'].items()},
        train_seconds=p['train_seconds'],
        train_samples_per_second=p['train_samples_per_second'])


def table_payload(table):
    """A validation table as plain lists, for files read back with weights_only=True."""
    if table is None:
        return {'validation': None, 'validation_index': None}
    return {'validation': table.reset_index().to_dict(orient='list'),
            'validation_index': table.index.name or 'sample-id'}


def table_from_payload(payload):
    """The inverse of table_payload."""
    if payload['validation'] is None:
        return None
    return pd.DataFrame(payload['validation']).set_index(payload['validation_index'])


def cpu_state(model):
    """A copy of the model's weights on the CPU (a best state, or a resume state)."""
    return {k: v.detach().to('cpu', copy=True) for k, v in model.state_dict().items()}


def save_resume(path, model, optimizer, scheduler, state):
    """The last epoch's full state: enough to go on as if the run had never stopped."""
    payload = {
        'model': cpu_state(model),
        'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
        'torch_rng': torch.get_rng_state(),
        'epoch': state['epoch'], 'best_loss': state['best_loss'],
        'best_epoch': state['best_epoch'], 'waited': state['waited'],
        'best_state': state['best_state'], 'history': state['history'],
        **table_payload(state['validation']),
    }
    atomic_save(payload, path)


def load_resume(path, model, optimizer, scheduler):
    """Restore what save_resume wrote into the run's objects; returns the loop's state."""
    payload = torch.load(path, map_location='cpu', weights_only=True)
    model.load_state_dict(payload['model'])
    optimizer.load_state_dict(payload['optimizer'])
    scheduler.load_state_dict(payload['scheduler'])
    torch.set_rng_state(payload['torch_rng'])
    return {'epoch': payload['epoch'], 'best_loss': payload['best_loss'],
            'best_epoch': payload['best_epoch'], 'waited': payload['waited'],
            'history': payload['history'], 'best_state': payload['best_state'],
            'validation': table_from_payload(payload)}
