"""QIIME 2 views (biom table, sequences, distance matrix, metadata) -> engine data.

Every check here produces one paragraph that names the problem, counts what is
affected, shows a few IDs and says what to do. Samples are only ever left out with
a note that counts them.
"""
import sys
import warnings

import numpy as np
import pandas as pd

from .engine.data import AmpliconData

MIN_SAMPLES = 5       # fewer than this cannot be split into training and validation


def preview(ids, n=5):
    ids = [str(i) for i in ids]
    shown = ', '.join(repr(i) for i in ids[:n])
    return shown + (', …' if len(ids) > n else '')


def note(message):
    """A message the user sees with --verbose (and in the Python API's stdout)."""
    print(f'q2-aam: {message}', file=sys.stdout, flush=True)


def table_parts(table):
    """biom.Table -> (samples x features CSR counts, sample IDs, feature IDs)."""
    if table.is_empty() or table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError(
            f'The feature table is empty ({table.shape[1]} samples, {table.shape[0]} '
            'features). Give a table with at least one sample that has reads.')
    counts = table.matrix_data.T.tocsr()       # biom stores features x samples
    # features without a single read carry nothing; they need no sequence either
    used = np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() > 0)
    feature_ids = list(table.ids('observation'))
    return counts[:, used], list(table.ids('sample')), [feature_ids[i] for i in used]


def sequences_for(feature_ids, sequences):
    """The sequence of every table feature, in table order; missing ones are an error."""
    lookup = {str(k): str(v) for k, v in sequences.items()}
    missing = [f for f in feature_ids if f not in lookup]
    if missing:
        raise ValueError(
            f'{len(missing)} of {len(feature_ids)} features in the table have no sequence '
            f'in the sequences given: {preview(missing)}. Give the representative '
            'sequences (FeatureData[Sequence]) that belong to this table, or drop those '
            'features with `qiime feature-table filter-features-conditionally` / '
            '`filter-seqs`.')
    return [lookup[f] for f in feature_ids]


def select_samples(counts, sample_ids, keep):
    """Rows of the table for the sample IDs in ``keep`` (kept in table order)."""
    keep = set(keep)
    rows = [i for i, s in enumerate(sample_ids) if s in keep]
    return counts[rows], [sample_ids[i] for i in rows]


def check_reads(counts, sample_ids):
    totals = np.asarray(counts.sum(axis=1)).ravel()
    empty = [s for s, t in zip(sample_ids, totals) if t <= 0]
    if empty:
        raise ValueError(
            f'{len(empty)} of {len(sample_ids)} samples have no reads: {preview(empty)}. '
            'Remove them first, e.g. with `qiime feature-table filter-samples '
            '--p-min-frequency 1`.')


def distances_for(sample_ids, distance_matrix, ignore_missing, what='table'):
    """The matrix's samples that are in the table; table samples it lacks are an error
    unless ``ignore_missing``, then they are left out with a note."""
    in_matrix = set(distance_matrix.ids)
    missing = [s for s in sample_ids if s not in in_matrix]
    if missing and not ignore_missing:
        raise ValueError(
            f'{len(missing)} of {len(sample_ids)} samples in the {what} are missing from '
            f'the distance matrix: {preview(missing)}. Compute the distance matrix from '
            'the same table (e.g. `qiime diversity-lib unweighted-unifrac`), filter the '
            'table to the matrix\'s samples, or pass --p-ignore-missing-samples to leave '
            'them out.')
    if missing:
        note(f'left out {len(missing)} of {len(sample_ids)} samples that are not in the '
             f'distance matrix: {preview(missing)}.')
    return [s for s in sample_ids if s in in_matrix]


def target_values(column, sample_ids):
    """Metadata values for the table's samples; those without a value are left out
    with a note. Returns (kept sample IDs, values as a pandas Series)."""
    series = column.to_series()
    series.index = series.index.astype(str)
    present = series.reindex(sample_ids)
    missing = present[present.isna()].index.tolist()
    if missing:
        note(f'left out {len(missing)} of {len(sample_ids)} samples that have no value in '
             f'metadata column {column.name!r}: {preview(missing)}.')
    present = present.dropna()
    if len(present) < MIN_SAMPLES:
        raise ValueError(
            f'Only {len(present)} samples of the table have a value in metadata column '
            f'{column.name!r}; fitting needs at least {MIN_SAMPLES}. Check that the '
            'metadata\'s sample IDs match the table\'s, and that the column is filled in.')
    return list(present.index), present


OUTLIER_ROBUST_SDS = 10   # a target this many robust SDs from the median gets a warning


def warn(message):
    """A warning the user sees whatever the verbosity: printed like a note, and raised as
    a Python warning for the API (and q2cli's log)."""
    note(f'warning: {message}')
    warnings.warn(message, UserWarning, stacklevel=3)


def regression_targets(values, column_name):
    """A numeric column's values as float64, refused when they cannot be scaled: training
    works on (value - mean) / sd, which overflows for values like 1e300 and made every
    prediction -inf. Values far from the rest are named in a warning."""
    y = values.to_numpy(np.float64)
    ids = values.index
    bad = ~np.isfinite(y)
    with np.errstate(over='ignore', invalid='ignore'):
        mean, sd = y[~bad].mean() if (~bad).any() else 0.0, y[~bad].std()
        scaled_ok = np.isfinite(mean) and np.isfinite(sd) and \
            np.isfinite((y[~bad] - mean) / (sd or 1.0)).all()
    if bad.any() or not scaled_ok:
        largest = np.argsort(-np.abs(np.where(bad, np.inf, y)))[:5]
        shown = ', '.join(f'{ids[i]!s} ({y[i]:g})' for i in largest)
        what = (f'{int(bad.sum())} of {len(y)} values are not finite' if bad.any() else
                'its values are too large to standardise (their mean or spread overflows '
                'a 64-bit float)')
        raise ValueError(
            f'Metadata column {column_name!r} cannot be used as a regression target: {what}. '
            f'The largest in magnitude: {shown}. Correct those values, or transform the '
            'column (e.g. log, or other units) so that it holds ordinary finite numbers.')
    median = np.median(y)
    spread = 1.4826 * np.median(np.abs(y - median)) or y.std()
    if spread > 0:
        far = np.flatnonzero(np.abs(y - median) > OUTLIER_ROBUST_SDS * spread)
        if len(far):
            shown = ', '.join(f'{ids[i]!s} ({y[i]:g})' for i in far[:5])
            warn(f'{len(far)} of {len(y)} values of metadata column {column_name!r} lie more '
                 f'than {OUTLIER_ROBUST_SDS} robust standard deviations from the median '
                 f'({median:g}): {shown}{", …" if len(far) > 5 else ""}. With the mean squared '
                 'error they dominate training; check them, or use --p-regression-loss huber.')
    return y


def note_numeric_looking(values, column_name):
    """A categorical column whose values are mostly numbers was probably meant to be
    numeric: say which values made it categorical and how to get a regressor."""
    text = values.astype(str)
    numeric = pd.to_numeric(text, errors='coerce')
    words = text[numeric.isna()]
    if numeric.notna().sum() < 0.5 * len(text) or not len(words):
        return
    shown = ', '.join(repr(w) for w in words.value_counts().index[:5])
    warn(f'metadata column {column_name!r} is categorical, so this fit is a classifier with '
         f'{text.nunique()} classes, although {int(numeric.notna().sum())} of its {len(text)} '
         f'values are numbers: {len(words)} values are not ({shown}). To fit a regressor, '
         'leave those cells empty (samples without a value are left out) and declare the '
         'column numeric with a "#q2:types" line in the metadata file.')


def class_labels(values, column_name, validation_size):
    """Sorted class list; a single class, or a class too small to stratify, is an error."""
    values = values.astype(str)
    counts = values.value_counts()
    if len(counts) < 2:
        raise ValueError(
            f'Metadata column {column_name!r} has only one class ({counts.index[0]!r}, '
            f'{counts.iloc[0]} samples) among the table\'s samples; a classifier needs at '
            'least two. Choose another column or add samples of other classes.')
    lonely = counts[counts < 2]
    if validation_size > 0 and len(lonely):
        raise ValueError(
            f'{len(lonely)} classes of metadata column {column_name!r} have a single '
            f'sample ({preview(lonely.index)}), so they cannot be split between training '
            'and validation. Filter those samples out (`qiime feature-table '
            'filter-samples`), merge rare classes, or set --p-validation-size 0.')
    return sorted(counts.index)


def build_data(counts, sample_ids, feature_ids, sequences, max_asvs, max_bp,
               distances=None, targets=None):
    """Keep the features that the selected samples use, then build AmpliconData."""
    used = np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() > 0)
    check_reads(counts, sample_ids)
    return AmpliconData(counts[:, used], sample_ids, [feature_ids[i] for i in used],
                        [sequences[i] for i in used], max_asvs=max_asvs, max_bp=max_bp,
                        distances=distances, targets=targets)


def distance_array(distance_matrix, sample_ids):
    return distance_matrix.filter(sample_ids).data.astype(np.float32)


def alpha_values(alpha, sample_ids):
    alpha = pd.Series(alpha)
    alpha.index = alpha.index.astype(str)
    missing = [s for s in sample_ids if s not in alpha.index or pd.isna(alpha.get(s))]
    if missing:
        raise ValueError(
            f'{len(missing)} of {len(sample_ids)} samples have no alpha-diversity value: '
            f'{preview(missing)}. Compute alpha diversity from the same table.')
    return alpha.reindex(sample_ids).to_numpy(np.float64)


def group_values(column, sample_ids):
    """Each sample's group (subject) as an array in sample order; a sample without one is
    an error, since it could land on both sides of a split."""
    series = column.to_series()
    series.index = series.index.astype(str)
    present = series.reindex(sample_ids)
    missing = present[present.isna() | (present.astype(str).str.strip() == '')].index.tolist()
    if missing:
        raise ValueError(
            f'{len(missing)} of {len(sample_ids)} samples have no value in the groups column '
            f'{column.name!r}: {preview(missing)}. Every sample needs a group, or it could be '
            'on both sides of a split: fill the column in (a sample of its own can be its '
            'own group), or filter those samples out first.')
    return present.astype(str).to_numpy(dtype=object)
