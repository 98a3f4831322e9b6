"""The training loop: batches, losses, validation, early stopping, best state, logs.

Everything it needs arrives as arguments and nothing is kept at module level, so the
same loop can later run under ``torchrun`` (only rank 0 would write logs).
"""
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import distributed, losses, metrics, optim
from .runstate import atomic_save, write_error
from .data import batch_indices
from .tokens import mask_nucleotides

MAX_NONFINITE_STEPS = 5


@dataclass
class TrainSettings:
    epochs: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    optimizer: str = 'adamw'
    scheduler: str = 'warmup_cosine'
    scheduler_params: dict = field(default_factory=dict)
    warmup_fraction: float = 0.1
    patience: int = 10
    max_grad_norm: Optional[float] = None
    nuc_mask_ratio: float = 0.15
    rarefy_depth: int = 0                 # per-epoch read subsampling of training samples
    unifrac_weight: float = 1.0
    nuc_weight: float = 1.0
    target_weight: float = 1.0
    regression_loss: str = 'mse'          # 'mse' | 'huber'
    target_scale: Optional[tuple] = None  # (mean, sd) to standardise a regression target
                                          # with; None: the training rows' own
    class_weights: Optional[list] = None
    freeze_encoder: bool = False
    random_seed: int = 0
    device: str = 'cpu'                   # 'cpu' | 'cuda' | 'auto'
    threads: Optional[int] = None
    activation_checkpointing: Optional[bool] = None   # None: see checkpoint_by_default
    compile: Optional[str] = None         # a torch.compile backend ('inductor') for the
                                          # training forward; None: run it eagerly
    histogram_frequency: int = 50         # epochs; 0 = off
    tensorboard_dir: Optional[str] = None
    checkpoint_dir: Optional[str] = None
    quiet: bool = False

    def to_dict(self):
        return asdict(self)


@dataclass
class TrainResult:
    state_dict: dict                      # the best state, on CPU
    history: pd.DataFrame                 # one row per epoch
    validation: pd.DataFrame              # truth vs prediction at the best epoch
    best_epoch: int
    epochs_run: int
    target_mean: Optional[float]
    target_std: Optional[float]
    tensorboard: dict                     # relative path -> bytes of the event files
    train_seconds: float
    train_samples_per_second: float


CHECKPOINT_FROM = 128   # embedding_dim x attention_layers from which CPU training checkpoints


def checkpoint_by_default(cfg, device):
    """Recompute the ASV encoder's layers in the backward pass (less memory, more time)?

    On the CPU for models from 128 x 1 (the public AAM's 128 x 4 needs it to stay under
    2 GB). Not for the small default (32 x 1): there it cost 40 % more CPU time and saved
    no measurable memory (benchmarks/results.md). Not on a GPU, where memory is ample.
    """
    return device.type == 'cpu' and cfg.embedding_dim * cfg.asv_layers >= CHECKPOINT_FROM


def target_scale(values):
    """(mean, sd) of regression targets; sd 1 for a constant target."""
    y = np.asarray(values, np.float64)
    return float(y.mean()), float(y.std()) or 1.0


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


def _target_kind(model):
    if model.cfg.task == 'classification':
        return 'classification'
    return 'regression' if model.cfg.n_outputs > 0 else None


def _fmt(value):
    return f'{value:.6f}' if abs(value) < 1e-4 else f'{value:.4f}'


class _Running:
    """Running means of named values, for the progress bar and the epoch record, weighted
    by the samples of each batch: a 2-sample last batch weighs 2 samples, not a batch."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, name, value, weight=1):
        if value is None:
            return
        self.sums[name] = self.sums.get(name, 0.0) + float(value) * weight
        self.counts[name] = self.counts.get(name, 0) + weight

    def means(self):
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


class Trainer:
    """Trains one model on one dataset; ``run()`` returns a ``TrainResult``."""

    def __init__(self, model, data, train_rows, val_rows, settings, on_epoch_end=None):
        self.dist = distributed.context()
        if not self.dist.main:     # one rank writes: the others log, save and print nothing
            settings = replace(settings, quiet=True, checkpoint_dir=None, tensorboard_dir=None,
                               histogram_frequency=0)
        self.model, self.data, self.s = model, data, settings
        self.train_rows = np.asarray(train_rows, np.int64)
        self.val_rows = np.asarray(val_rows, np.int64)
        self.on_epoch_end = on_epoch_end
        self._frozen = None
        self.device = resolve_device(settings.device)
        if settings.threads:
            torch.set_num_threads(int(settings.threads))
        self.kind = _target_kind(model)
        if self.kind is not None and data.targets is None:
            raise ValueError('This model predicts a target, but the data have no targets.')
        self.use_unifrac = data.distances is not None and settings.unifrac_weight > 0
        frozen = settings.freeze_encoder
        # a k-mer-only ASV encoder (nucleotide_layers 0) has no bases to predict
        self.use_nuc = (settings.nuc_weight > 0 and settings.nuc_mask_ratio > 0 and not frozen
                        and model.asv_encoder.reads_bases)
        self.weights = {'unifrac_loss': settings.unifrac_weight, 'nuc_loss': settings.nuc_weight,
                        'target_loss': settings.target_weight}
        if frozen:
            if self.kind is None:
                raise ValueError('freeze_encoder leaves nothing to train in a model without a '
                                 'target head.')
            self.use_unifrac = False
            for p in model.encoder_parameters():
                p.requires_grad_(False)
        self.mean = self.std = None
        if self.kind == 'regression' and settings.target_scale is not None:
            self.mean, self.std = (float(x) for x in settings.target_scale)
        elif self.kind == 'regression':
            self.mean, self.std = target_scale(data.targets[self.train_rows])
        self.class_weights = (None if settings.class_weights is None else
                              torch.tensor(settings.class_weights, dtype=torch.float32,
                                           device=self.device))
        checkpointing = settings.activation_checkpointing
        model.asv_encoder.checkpoint_layers = (
            checkpoint_by_default(model.cfg, self.device) if checkpointing is None
            else bool(checkpointing))
        model.to(self.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optim.make_optimizer(settings.optimizer, trainable,
                                              lr=settings.learning_rate,
                                              weight_decay=settings.weight_decay)
        self.net = distributed.wrap(model, self.device)   # DDP across ranks, else the model
        if settings.compile:     # batches differ in ASVs and lengths: compile for any shape
            self.net = torch.compile(self.net, backend=settings.compile, dynamic=True)
        # a global batch smaller than the ranks leaves one without samples: it is skipped
        self.steps_per_epoch = sum(len(b) >= self.dist.world for b in
                                   batch_indices(self.train_rows, settings.batch_size))
        self.scheduler = optim.make_scheduler(
            settings.scheduler, self.optimizer, settings.epochs * self.steps_per_epoch,
            warmup_fraction=settings.warmup_fraction, params=settings.scheduler_params)
        self.autocast = dict(device_type=self.device.type, dtype=torch.bfloat16,
                             enabled=self.device.type == 'cuda')

    # -- one batch -------------------------------------------------------------------
    def _standardise(self, targets):
        if self.kind == 'regression':
            return (targets.float() - self.mean) / self.std
        return targets

    def _step_losses(self, batch, generator, frozen_vectors=None, clean=False,
                     global_rows=None, sizes=None):
        """Forward one batch; returns (loss terms, model outputs).

        ``clean`` (validation): the samples are read from unmasked sequences, as
        predict() reads them; only the nucleotide loss reads the masked ones.
        ``global_rows``, ``sizes`` (several ranks): the global batch in rank order and each
        rank's share of it; the UniFrac loss is the global batch's.
        """
        tokens = batch.tokens
        mask = None
        if self.use_nuc:
            tokens, mask = mask_nucleotides(batch.tokens, self.s.nuc_mask_ratio, generator)
        vectors = None if frozen_vectors is None else frozen_vectors[batch.features]
        net = self.model if clean else self.net     # validation needs no gradient sync
        with torch.autocast(**self.autocast):
            out = net(batch.tokens if clean else tokens, batch.asv_index,
                      batch.abundance, asv_vectors=vectors)
            if clean and self.use_nuc:
                out['nuc_logits'] = self.model.nuc_head(self.model.asv_encoder(tokens)[1])
        terms = {}
        if self.use_unifrac and sizes is None:
            terms['unifrac_loss'] = losses.unifrac_loss(out['embedding'], batch.distances)
        elif self.use_unifrac:              # every pair of the global batch, across ranks
            everyone = distributed.gather_rows(out['embedding'], sizes)
            block = torch.from_numpy(self.data.distance_block(global_rows)).to(self.device)
            terms['unifrac_loss'] = losses.unifrac_loss(everyone, block)
        if self.use_nuc:
            terms['nuc_loss'] = losses.nuc_loss(out['nuc_logits'], batch.tokens, mask)
        if self.kind is not None:
            terms['target_loss'] = losses.target_loss(
                out['prediction'], self._standardise(batch.targets), self.kind,
                self.s.regression_loss, self.class_weights)
        return terms, out

    def _targets_out(self, out):
        """Model outputs -> predictions on the user's scale (or class probabilities)."""
        pred = out['prediction'].float().detach()
        if self.kind == 'classification':
            return torch.softmax(pred, dim=-1).cpu().numpy()
        return (pred[:, 0] * self.std + self.mean).cpu().numpy()

    def _target_metrics(self, truth, predicted):
        if self.kind == 'regression':
            m = metrics.regression_metrics(truth, predicted)
            return {'r2': m['r2'], 'mae': m['mae']}
        if self.kind == 'classification':
            m = metrics.classification_metrics(truth, predicted, self.model.cfg.n_outputs)
            return {'accuracy': m['accuracy'], 'f1': m['f1']}
        return {}

    # -- epochs ----------------------------------------------------------------------
    def _frozen_vectors(self):
        """A frozen encoder's ASV vectors, encoded once per run: its weights never change."""
        if not self.s.freeze_encoder:
            return None
        if self._frozen is None:
            self._frozen = encode_all_asvs(self.model, self.data, self.device)
        return self._frozen

    def _train_epoch(self, epoch, bar):
        self.model.train()
        if self.s.freeze_encoder:       # frozen parts stay in eval mode: no dropout noise
            self.model.asv_encoder.eval()
            self.model.sample_encoder.eval()
        frozen = self._frozen_vectors()
        generator = torch.Generator().manual_seed(self.s.random_seed * 100003 + epoch)
        running, norms = _Running(), []
        truth, predicted = [], []
        rarefy = ((self.s.rarefy_depth, np.random.default_rng([self.s.random_seed, epoch, 1]))
                  if self.s.rarefy_depth else None)
        world = self.dist.world
        for rows in batch_indices(self.train_rows, self.s.batch_size, shuffle=True,
                                  seed=self.s.random_seed, epoch=epoch):
            local, global_rows, sizes = rows, None, None
            if world > 1:                   # this rank's share of the global batch
                if len(rows) < world:
                    continue
                parts = distributed.shards(rows, world)
                local, global_rows = parts[self.dist.rank], np.concatenate(parts)
                sizes = [len(part) for part in parts]
            batch = self.data.make_batch(local, rarefy=rarefy,
                                         distances=global_rows is None).to(self.device)
            terms, out = self._step_losses(batch, generator, frozen, global_rows=global_rows,
                                           sizes=sizes)
            step_terms = terms
            if world > 1:
                # a per-sample mean of this rank's share, weighted so that DDP's average of
                # the ranks' gradients is the global batch's mean (the UniFrac term already
                # is the global batch's)
                share = world * len(local) / len(rows)
                step_terms = {k: v if v is None or k == 'unifrac_loss' else v * share
                              for k, v in terms.items()}
            loss = losses.total_loss(step_terms, self.weights)
            if loss is None:
                continue
            self.optimizer.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(loss))
            if world > 1:
                finite = distributed.all_ranks_agree(finite)
            if finite:
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad],
                    self.s.max_grad_norm or float('inf'))
                finite = bool(torch.isfinite(norm))
            if not finite:
                self._nonfinite(terms, batch)
                continue
            self.bad_steps = 0
            if world > 1:                   # the logs show the global batch's losses
                terms = {k: v if v is None or k == 'unifrac_loss' else torch.tensor(
                    distributed.global_mean(v.item(), len(local), len(rows)))
                    for k, v in terms.items()}
                loss = losses.total_loss(terms, self.weights)
            self._log_step(terms, loss, float(norm))
            self.optimizer.step()
            if not self.scheduler.per_epoch:
                self.scheduler.step()
            norms.append(float(norm))
            running.add('total_loss', loss.item(), len(rows))
            for name, value in terms.items():
                running.add(name, None if value is None else value.item(), len(rows))
            if self.kind is not None:
                truth.append(self.data.targets[batch.samples])
                predicted.append(self._targets_out(out))
            bar.set_postfix_str(self._postfix(running.means()), refresh=False)
            bar.update(len(rows))
        record = {f'train_{k}': v for k, v in running.means().items()}
        if truth:
            record.update({f'train_{k}': v for k, v in self._target_metrics(
                np.concatenate(truth), np.concatenate(predicted)).items()})
        record['learning_rate'] = self.optimizer.param_groups[0]['lr']
        record['grad_norm'] = float(np.mean(norms)) if norms else float('nan')
        return record

    def _nonfinite(self, terms, batch):
        self.bad_steps += 1
        shown = ', '.join(f'{k}={v.item():.4g}' for k, v in terms.items() if v is not None)
        bad = [k for k, v in terms.items() if v is not None and not torch.isfinite(v)]
        what = (f"the {' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite"
                if bad else 'the gradient norm is not finite')
        ids = ', '.join(self.data.sample_ids[batch.samples][:10]) + \
            (', …' if len(batch.samples) > 10 else '')
        message = (f'Skipped an optimizer step: {what} ({shown}); the batch\'s '
                   f'{len(batch.samples)} samples: {ids}.')
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        if self.bad_steps >= MAX_NONFINITE_STEPS:
            raise FloatingPointError(
                f'Training stopped: {self.bad_steps} steps in a row had a non-finite loss or '
                f'gradient (last: {what}: {shown}; samples {ids}). Lower the learning rate, set '
                'max_grad_norm (e.g. 1.0), or check the input for extreme values.')

    @torch.no_grad()
    def _validate(self):
        """Validation losses and metrics in eval mode, with a fixed nucleotide mask."""
        self.model.eval()
        frozen = self._frozen_vectors()
        generator = torch.Generator().manual_seed(self.s.random_seed + 7)
        running, truth, predicted, embeddings = _Running(), [], [], []
        for rows in batch_indices(self.val_rows, self.s.batch_size):
            batch = self.data.make_batch(rows).to(self.device)
            terms, out = self._step_losses(batch, generator, frozen, clean=True)
            loss = losses.total_loss(terms, self.weights)
            running.add('total_loss', None if loss is None else loss.item(), len(rows))
            for name, value in terms.items():
                running.add(name, None if value is None else value.item(), len(rows))
            embeddings.append(out['embedding'].float().cpu())
            if self.kind is not None:
                truth.append(self.data.targets[batch.samples])
                predicted.append(self._targets_out(out))
        record = {f'val_{k}': v for k, v in running.means().items()}
        table = None
        if self.kind is not None:
            truth, predicted = np.concatenate(truth), np.concatenate(predicted)
            record.update({f'val_{k}': v for k, v in self._target_metrics(truth, predicted).items()})
            table = self._validation_table(truth, predicted)
        elif self.use_unifrac and len(self.val_rows) >= 2:
            table = _pair_table(self.data, self.val_rows, torch.cat(embeddings))
        return record, table

    def _validation_table(self, truth, predicted):
        ids = pd.Index(self.data.sample_ids[self.val_rows], name='sample-id')
        if self.kind == 'regression':
            return pd.DataFrame({'truth': truth, 'prediction': predicted}, index=ids)
        classes = self.class_names
        table = pd.DataFrame({'truth': [classes[i] for i in truth],
                              'prediction': [classes[i] for i in predicted.argmax(1)]}, index=ids)
        for c, name in enumerate(classes):
            table[f'prob:{name}'] = predicted[:, c]
        return table

    def _postfix(self, means):
        names = [('total_loss', 'Total'), ('unifrac_loss', 'UniFrac'), ('nuc_loss', 'Nuc'),
                 ('target_loss', 'Target')]
        parts = [f'{label}={_fmt(means[key])}' for key, label in names if key in means]
        parts.append(f"LR={self.optimizer.param_groups[0]['lr']:.2e}")
        return ' '.join(parts)

    # -- the run -----------------------------------------------------------------------
    def run(self, class_names=None, resume_from=None):
        """Train; without a tensorboard_dir the event files are written to a temporary
        folder that is removed however the run ends (their bytes are in the result): on an
        error, Ctrl-C or SIGTERM; after a SIGKILL, by the next run (sweep_stale_folders)."""
        if self.s.tensorboard_dir:
            return self._run(self.s.tensorboard_dir, class_names, resume_from)
        sweep_stale_folders()
        with _terminate_as_interrupt(), tempfile.TemporaryDirectory(
                prefix=f'{TEMP_PREFIX}{os.getpid()}-') as tb_dir:
            return self._run(tb_dir, class_names, resume_from)

    def _run(self, tb_dir, class_names, resume_from):
        if class_names is None and self.kind == 'classification':
            class_names = [str(c) for c in range(self.model.cfg.n_outputs)]
        self.class_names = class_names
        self.bad_steps = 0
        from torch.utils.tensorboard import SummaryWriter  # heavy import, only when training
        # TensorBoard overlays runs, not tags: train/ and val/ are two runs that log the
        # same tag names, so that each chart shows both curves
        with SummaryWriter(log_dir=os.path.join(tb_dir, 'train')) as writer, \
                SummaryWriter(log_dir=os.path.join(tb_dir, 'val')) as val_writer:
            self.writers = {'train': writer, 'val': val_writer}
            self.global_step = 0
            state, started, seen = self._epochs(resume_from)
        elapsed = time.perf_counter() - started
        if state['best_state'] is None:        # every epoch non-finite or no epoch run
            state['best_state'] = _cpu_state(self.model)
        validation = state['validation']
        if validation is None:
            validation = pd.DataFrame(columns=['truth', 'prediction'],
                                      index=pd.Index([], name='sample-id'))
        tensorboard = _read_tree(tb_dir)
        return TrainResult(
            state_dict=state['best_state'], history=pd.DataFrame(state['history']),
            validation=validation, best_epoch=state['best_epoch'], epochs_run=state['epoch'],
            target_mean=self.mean, target_std=self.std,
            tensorboard=tensorboard, train_seconds=elapsed,
            train_samples_per_second=seen / elapsed if elapsed > 0 else float('nan'))

    def _epochs(self, resume_from):
        """The epoch loop; returns (final state, start time, samples seen)."""
        s = self.s
        state = {'epoch': 0, 'best_loss': math.inf, 'best_epoch': 0, 'waited': 0,
                 'history': [], 'best_state': None, 'validation': None}
        if resume_from is not None:
            state = self._load_resume(resume_from)
            self.global_step = state['epoch'] * self.steps_per_epoch
        else:               # dropout draws from torch's global RNG: same seed, same run
            torch.manual_seed(s.random_seed)
        started = time.perf_counter()
        seen = 0
        for epoch in range(state['epoch'] + 1, s.epochs + 1):
            with tqdm(total=len(self.train_rows), desc=f'Epoch {epoch}/{s.epochs}',
                      file=sys.stderr, disable=s.quiet, leave=False) as bar:
                record = {'epoch': epoch, **self._train_epoch(epoch, bar)}
            seen += len(self.train_rows)
            table = None
            if len(self.val_rows):
                val_record, table = self._validate()
                record.update(val_record)
            monitored = record.get('val_total_loss', record.get('train_total_loss', math.inf))
            if self.scheduler.per_epoch:
                self.scheduler.step(monitored)
            improved = monitored < state['best_loss']
            # the validation figure of an improved epoch, drawn once for the logs and the PNG
            figure = (validation_figure(table, self.kind, self.class_names)
                      if improved and table is not None and len(table) else None)
            if improved:
                state.update(best_loss=monitored, best_epoch=epoch, waited=0,
                             best_state=_cpu_state(self.model), validation=table)
                if s.checkpoint_dir:
                    atomic_save(state['best_state'], Path(s.checkpoint_dir) / 'best_model.pt')
                    if figure is not None:
                        png = Path(s.checkpoint_dir) / f'validation-epoch-{epoch}.png'
                        try:
                            figure.savefig(png, dpi=100)
                        except OSError as e:
                            png.unlink(missing_ok=True)
                            raise write_error(png, e) from None
            else:
                state['waited'] += 1
            state['history'].append(record)
            state['epoch'] = epoch
            self._log(epoch, record, figure)
            if not s.quiet:
                tqdm.write(_summary_line(record, s.epochs, improved), file=sys.stderr)
            if s.checkpoint_dir:
                self._save_resume(state)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, record)
            if len(self.val_rows) and state['waited'] >= s.patience:
                if not s.quiet:
                    tqdm.write(f'Early stop: validation loss has not improved for '
                               f'{s.patience} epochs; keeping epoch {state["best_epoch"]}.',
                               file=sys.stderr)
                break
        return state, started, seen

    def _log_step(self, terms, loss, norm):
        """Per-step scalars (tags step/…, x axis: optimizer steps): the loss terms, the
        learning rate, the gradient norm before clipping and whether it was clipped."""
        self.global_step += 1
        writer, step = self.writers['train'], self.global_step
        writer.add_scalar('step/total_loss', loss.item(), step)
        for name, value in terms.items():
            if value is not None:
                writer.add_scalar(f'step/{name}', value.item(), step)
        writer.add_scalar('step/learning_rate', self.optimizer.param_groups[0]['lr'], step)
        writer.add_scalar('step/grad_norm', norm, step)
        limit = self.s.max_grad_norm
        writer.add_scalar('step/clipped', float(bool(limit) and norm > limit), step)

    def _log(self, epoch, record, figure=None):
        writer = self.writers['train']
        for key, value in record.items():
            if key == 'epoch' or value is None or not np.isfinite(value):
                continue
            if key.startswith(('train_', 'val_')):
                split, name = key.split('_', 1)
                self.writers[split].add_scalar(name, value, epoch)
            else:
                writer.add_scalar(key, value, epoch)
        freq = self.s.histogram_frequency
        if freq and epoch % freq == 0:
            for name, p in self.model.named_parameters():
                if p.grad is not None and bool(p.grad.abs().sum() > 0):
                    writer.add_histogram(f'weights/{name}', p.detach().float().cpu(), epoch)
                    writer.add_histogram(f'gradients/{name}', p.grad.float().cpu(), epoch)
        if figure is not None:
            self.writers['val'].add_figure('figure', figure, epoch)
        for w in self.writers.values():
            w.flush()

    # -- resume ----------------------------------------------------------------------
    def _save_resume(self, state):
        payload = {
            'model': _cpu_state(self.model), 'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict(), 'torch_rng': torch.get_rng_state(),
            'epoch': state['epoch'], 'best_loss': state['best_loss'],
            'best_epoch': state['best_epoch'], 'waited': state['waited'],
            'best_state': state['best_state'], 'history': state['history'],
            **table_payload(state['validation']),
        }
        atomic_save(payload, Path(self.s.checkpoint_dir) / 'last_checkpoint.pt')

    def _load_resume(self, path):
        payload = torch.load(path, map_location='cpu', weights_only=True)
        self.model.load_state_dict(payload['model'])
        self.optimizer.load_state_dict(payload['optimizer'])
        self.scheduler.load_state_dict(payload['scheduler'])
        torch.set_rng_state(payload['torch_rng'])
        validation = table_from_payload(payload)
        return {'epoch': payload['epoch'], 'best_loss': payload['best_loss'],
                'best_epoch': payload['best_epoch'], 'waited': payload['waited'],
                'history': payload['history'], 'best_state': payload['best_state'],
                'validation': validation}


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


class _terminate_as_interrupt:
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


def train(model, data, train_rows, val_rows, settings, class_names=None, resume_from=None,
          on_epoch_end=None):
    """Train ``model`` in place and return the best state and the run's record."""
    trainer = Trainer(model, data, train_rows, val_rows, settings, on_epoch_end=on_epoch_end)
    return trainer.run(class_names=class_names, resume_from=resume_from)


@torch.no_grad()
def encode_all_asvs(model, data, device, rows=None, chunk=512):
    """Encode every distinct ASV the given samples use, once: returns (F, D) on ``device``.

    Rows of features no sample uses stay zero; they are never gathered.
    """
    was_training = model.training
    model.eval()
    features = data.used_features(range(len(data)) if rows is None else rows)
    out = torch.zeros(len(data.feature_ids), model.cfg.embedding_dim, device=device)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda')
    for start in range(0, len(features), chunk):
        cols = torch.from_numpy(features[start:start + chunk])
        tokens = data.tokens[cols]
        tokens = tokens[:, :int((tokens != 0).sum(1).max())].to(device)
        with torch.autocast(**autocast):
            vectors, _ = model.asv_encoder(tokens)
        out[cols.to(device)] = vectors.float()
    model.train(was_training)
    return out


@torch.no_grad()
def predict(model, data, rows=None, batch_size=64, device='cpu', dedupe_table=True):
    """Sample embeddings and target outputs for ``rows`` (default: all samples).

    With ``dedupe_table`` every distinct ASV of the table is encoded once, then each
    batch only runs the sample encoder. Returns {'embedding': (n, D), 'prediction':
    (n, n_outputs) raw head outputs, when the model has a head}.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    model.to(device).eval()
    rows = np.arange(len(data)) if rows is None else np.asarray(rows, np.int64)
    vectors = encode_all_asvs(model, data, device, rows) if dedupe_table else None
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda')
    embeddings, predictions = [], []
    for chunk in batch_indices(rows, batch_size):
        batch = data.make_batch(chunk, distances=False).to(device)
        with torch.autocast(**autocast):
            out = model(batch.tokens, batch.asv_index, batch.abundance,
                        asv_vectors=None if vectors is None else vectors[batch.features])
        embeddings.append(out['embedding'].float().cpu())
        if 'prediction' in out:
            predictions.append(out['prediction'].float().cpu())
    result = {'embedding': torch.cat(embeddings).numpy()}
    if predictions:
        result['prediction'] = torch.cat(predictions).numpy()
    return result


def class_probabilities(raw):
    """Softmax over the last axis of raw classifier outputs (numpy, overflow-safe)."""
    shifted = np.exp(raw - raw.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def average_predictions(outputs, kind):
    """Several models' raw head outputs (each (n, n_outputs)) -> one array of that shape.

    A regressor's standardised values are averaged. A classifier's class probabilities
    are averaged, then returned as their log, so that softmax of the result gives the
    averaged probabilities and argmax the class they favour.
    """
    stacked = np.stack([np.asarray(o, np.float64) for o in outputs])   # (M, n, C)
    if kind != 'classification':
        return stacked.mean(0)
    return np.log(class_probabilities(stacked).mean(0))


def validation_figure(table, kind, class_names=None):
    """The figure of a validation table: scatter, confusion matrix or UniFrac pairs."""
    from . import plots
    if kind == 'regression':
        return plots.regression_figure(table['truth'].to_numpy(float),
                                       table['prediction'].to_numpy(float))
    if kind == 'classification':
        names = list(class_names)
        lookup = {n: i for i, n in enumerate(names)}
        return plots.confusion_figure(table['truth'].map(lookup).to_numpy(int),
                                      table['prediction'].map(lookup).to_numpy(int), names)
    return plots.unifrac_figure(table['truth'].to_numpy(float), table['prediction'].to_numpy(float))


# the validation figure's UniFrac pairs come from at most this many samples (500,000 pairs):
# enough to see the fit, and bounded however many samples a large pretraining validates
MAX_PAIR_SAMPLES = 1000


def _pair_table(data, rows, embeddings):
    """UniFrac truth vs embedding distance for every pair of (the first 1,000) validation
    samples."""
    from .losses import pairwise_distances
    rows, embeddings = rows[:MAX_PAIR_SAMPLES], embeddings[:MAX_PAIR_SAMPLES]
    ids = data.sample_ids[rows]
    i, j = np.triu_indices(len(rows), k=1)
    truth = data.distance_block(rows)[i, j]
    known = ~np.isnan(truth)                   # pairs of pooled studies have no distance
    i, j = i[known], j[known]
    return pd.DataFrame({
        'truth': truth[known],
        'prediction': pairwise_distances(embeddings).numpy()[known]},
        index=pd.Index([f'{a} | {b}' for a, b in zip(ids[i], ids[j])], name='sample-id'))


def _summary_line(record, epochs, improved):
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for key in ('train_total_loss', 'val_total_loss', 'val_r2', 'val_mae', 'val_accuracy'):
        if key in record and record[key] is not None and np.isfinite(record[key]):
            parts.append(f'{key}={_fmt(record[key])}')
    parts.append(f"lr={record['learning_rate']:.2e}")
    return '  '.join(parts) + ('  *best*' if improved else '')


def _cpu_state(model):
    return {k: v.detach().to('cpu', copy=True) for k, v in model.state_dict().items()}


def _read_tree(directory):
    root = Path(directory)
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob('*')) if p.is_file()}


__all__ = ['TrainSettings', 'TrainResult', 'Trainer', 'train', 'predict', 'encode_all_asvs',
           'average_predictions', 'class_probabilities', 'target_scale', 'seed_everything', 'resolve_device',
           'validation_figure']
