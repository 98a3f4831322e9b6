"""QIIME 2 views (biom table, sequences, distance matrix, metadata) -> engine data.

Every check here produces one paragraph that names the problem, counts what is
affected, shows a few IDs and says what to do. Samples are only ever left out with
a note that counts them.
"""
import sys
import warnings

import numpy as np
import pandas as pd

from ..engine.data import AmpliconData
from ..engine.messages import preview

MIN_SAMPLES = 5       # fewer than this cannot be split into training and validation


def note(message):
    """A message the user sees with --verbose (and in the Python API's stdout)."""
    print(f'q2-aam: {message}', file=sys.stdout, flush=True)


def as_table(view):
    """The feature table an action was handed, as a biom.Table. QIIME 2 hands the BIOM
    file; this biom release cannot read IDs with non-ASCII letters (a UnicodeDecodeError
    deep inside it), so those files are read here, decoding the IDs as UTF-8."""
    import biom
    import h5py
    if isinstance(view, biom.Table):
        return view
    path = str(view.path if hasattr(view, 'path') else view)
    try:
        with h5py.File(path, 'r') as fh:
            return biom.Table.from_hdf5(fh)
    except UnicodeDecodeError:
        return _read_biom_utf8(path)


def _read_biom_utf8(path):
    import biom
    import h5py
    import scipy.sparse as sp
    try:
        with h5py.File(path, 'r') as f:
            ids = {axis: [x.decode('utf-8') if isinstance(x, bytes) else str(x)
                          for x in f[axis]['ids'][:]] for axis in ('observation', 'sample')}
            m = f['observation']['matrix']
            shape = (len(ids['observation']), len(ids['sample']))
            matrix = sp.csr_matrix((m['data'][:], m['indices'][:], m['indptr'][:]),
                                   shape=shape)
    except (KeyError, OSError, UnicodeDecodeError) as e:
        raise ValueError(
            f'The feature table could not be read ({type(e).__name__}: {e}): its sample or '
            'feature IDs are not plain text this biom release can decode. Rename them to '
            'ASCII letters, digits, dots and dashes (e.g. `qiime feature-table rename-ids`), '
            'and import the table again.') from None
    return biom.Table(matrix, ids['observation'], ids['sample'])


def table_parts(table):
    """biom.Table -> (samples x features CSR counts, sample IDs, feature IDs)."""
    table = as_table(table)
    if table.is_empty() or table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError(
            f'The feature table is empty ({table.shape[1]} samples, {table.shape[0]} '
            'features). Give a table with at least one sample that has reads.')
    counts = table.matrix_data.T.tocsr()       # biom stores features x samples
    _check_counts(counts, list(table.ids('sample')), list(table.ids('observation')))
    # features without a single read carry nothing; they need no sequence either
    used = np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() > 0)
    feature_ids = list(table.ids('observation'))
    return counts[:, used], list(table.ids('sample')), [feature_ids[i] for i in used]


def _check_counts(counts, sample_ids, feature_ids):
    """Counts are finite and not negative: a NaN count shifts predictions silently, an
    infinite one breaks read subsampling deep inside numpy."""
    data = counts.data
    with np.errstate(invalid='ignore'):
        bad = ~np.isfinite(data) | (data < 0)
    if not bad.any():
        return
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))[bad]
    cols = counts.indices[bad]
    cells = [f'{sample_ids[r]} / {feature_ids[c]} ({data[k]})'
             for r, c, k in zip(rows[:5], cols[:5], np.flatnonzero(bad)[:5])]
    raise ValueError(
        f'The feature table holds {int(bad.sum())} counts that are not finite numbers of '
        f'at least 0 (NaN, infinite or negative), in {len(set(rows))} samples: '
        f'{", ".join(cells)}{", …" if bad.sum() > 5 else ""} (sample / feature (count)). '
        'Nothing was trained or predicted. A feature table holds read counts: rebuild it '
        'from the denoiser\'s output, or correct those cells.')


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
    found = [lookup[f] for f in feature_ids]
    # only ambiguity codes (empty sequences and other letters are the tokenizer's to name)
    unreadable = [f for f, q in zip(feature_ids, found)
                  if q and set(q.upper()) <= set('NRYSWKMBDHV')]
    if unreadable:
        raise ValueError(
            f'{len(unreadable)} of {len(feature_ids)} features in the table have a sequence '
            f'with no A, C, G or T (all N or other ambiguity codes): {preview(unreadable)}. '
            'The model reads ASVs by their bases, so these carry nothing it can read. Drop '
            'them first (`qiime feature-table filter-features` with their IDs, and '
            '`qiime feature-table filter-seqs`).')
    return found


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
# a regression target beyond this is refused: float32 ends near 3.4e38, and a margin keeps
# sums and squares of targets finite while training
FLOAT32_TARGET_LIMIT = 1e30


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
    # training reads targets as 32-bit floats: larger values become infinite there
    huge = np.abs(np.where(bad, 0.0, y)) > FLOAT32_TARGET_LIMIT
    if huge.any():
        largest = np.flatnonzero(huge)[np.argsort(-np.abs(y[huge]))][:5]
        shown = ', '.join(f'{ids[i]!s} ({y[i]:g})' for i in largest)
        raise ValueError(
            f'Metadata column {column_name!r} cannot be used as a regression target: '
            f'{int(huge.sum())} of {len(y)} values are beyond what training can represent '
            f'(32-bit floats, about ±{FLOAT32_TARGET_LIMIT:.0e}): {shown}. Nothing was '
            'trained. Correct those values, or transform the column (e.g. log, or other '
            'units) so that it holds ordinary numbers.')
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
               distances=None, targets=None, read_floor=0.0):
    """Keep the features that the selected samples use, then build AmpliconData."""
    used = np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() > 0)
    check_reads(counts, sample_ids)
    return AmpliconData(counts[:, used], sample_ids, [feature_ids[i] for i in used],
                        [sequences[i] for i in used], max_asvs=max_asvs, max_bp=max_bp,
                        distances=distances, targets=targets, read_floor=read_floor)


def distance_array(distance_matrix, sample_ids):
    """The matrix's block of these samples, refused when a distance is negative or
    infinite (NaN is an unknown pair, left out of the loss: pooled studies have them)."""
    block = distance_matrix.filter(sample_ids).data
    with np.errstate(invalid='ignore'):
        bad = np.isinf(block) | (block < 0)
    if bad.any():
        i, j = np.nonzero(np.triu(bad, 1) | np.tril(bad, -1).T)
        pairs = [f'{sample_ids[a]} - {sample_ids[b]} ({block[a, b]})'
                 for a, b in zip(i[:5], j[:5])]
        raise ValueError(
            f'The distance matrix holds {len(i)} distances that are negative or infinite: '
            f'{", ".join(pairs)}{", …" if len(i) > 5 else ""}. Distances between samples '
            'are 0 or more (UniFrac lies in [0, 1]); the matrix is damaged or is not a '
            'distance matrix. Compute it again (e.g. `qiime diversity-lib '
            'unweighted-unifrac`).')
    return block.astype(np.float32)


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
