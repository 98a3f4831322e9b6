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

from . import distributed, losses, metrics, optim, runlog
from .plots import validation_figure
from .runstate import LAST, atomic_save, cpu_state, load_resume, save_resume, write_error
from .runtime import TEMP_PREFIX, autocast_settings, checkpoint_by_default, read_files, \
    resolve_device, sweep_stale_folders, terminate_as_interrupt
from .data import batch_indices
from .predict import encode_all_asvs
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


def target_scale(values):
    """(mean, sd) of regression targets; sd 1 for a constant target."""
    y = np.asarray(values, np.float64)
    return float(y.mean()), float(y.std()) or 1.0


def _target_kind(model):
    if model.cfg.task == 'classification':
        return 'classification'
    return 'regression' if model.cfg.n_outputs > 0 else None


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
        self.autocast = autocast_settings(self.device)

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
                self.s.regression_loss)
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
        running, norms = runlog.Running(), []
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
            self.global_step += 1
            runlog.log_step(self.writers['train'], self.global_step, terms, loss, float(norm),
                            self.optimizer.param_groups[0]['lr'], self.s.max_grad_norm)
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
            learning_rate = self.optimizer.param_groups[0]['lr']
            bar.set_postfix_str(runlog.postfix(running.means(), learning_rate), refresh=False)
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
        running, truth, predicted, embeddings = runlog.Running(), [], [], []
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

    # -- the run -----------------------------------------------------------------------
    def run(self, class_names=None, resume_from=None):
        """Train; without a tensorboard_dir the event files are written to a temporary
        folder that is removed however the run ends (their bytes are in the result): on an
        error, Ctrl-C or SIGTERM; after a SIGKILL, by the next run (sweep_stale_folders)."""
        if self.s.tensorboard_dir:
            return self._run(self.s.tensorboard_dir, class_names, resume_from)
        sweep_stale_folders()
        with terminate_as_interrupt(), tempfile.TemporaryDirectory(
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
            state['best_state'] = cpu_state(self.model)
        validation = state['validation']
        if validation is None:
            validation = pd.DataFrame(columns=['truth', 'prediction'],
                                      index=pd.Index([], name='sample-id'))
        tensorboard = read_files(tb_dir)
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
            state = load_resume(resume_from, self.model, self.optimizer, self.scheduler)
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
                             best_state=cpu_state(self.model), validation=table)
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
            runlog.log_epoch(self.writers, epoch, record, self.model, s.histogram_frequency, figure)
            if not s.quiet:
                tqdm.write(runlog.summary_line(record, s.epochs, improved), file=sys.stderr)
            if s.checkpoint_dir:
                save_resume(Path(s.checkpoint_dir) / LAST, self.model, self.optimizer, self.scheduler,
                            state)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, record)
            if len(self.val_rows) and state['waited'] >= s.patience:
                if not s.quiet:
                    tqdm.write(f'Early stop: validation loss has not improved for '
                               f'{s.patience} epochs; keeping epoch {state["best_epoch"]}.',
                               file=sys.stderr)
                break
        return state, started, seen

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


def train(model, data, train_rows, val_rows, settings, class_names=None, resume_from=None,
          on_epoch_end=None):
    """Train ``model`` in place and return the best state and the run's record."""
    trainer = Trainer(model, data, train_rows, val_rows, settings, on_epoch_end=on_epoch_end)
    return trainer.run(class_names=class_names, resume_from=resume_from)
