"""UniFrac distances per batch, from a rooted tree, when a batch needs them.

Why: a distance matrix grows with the square of the samples (100,000 samples: 40 GB in
float32), while pretraining only ever reads the sub-matrix of one batch. From the tree,
each batch's sub-matrix is computed on the fly by Striped UniFrac (biocore's `unifrac`
package, the one q2-diversity uses), so memory grows with the table, not its square.
"""
import hashlib

import numpy as np
import scipy.sparse as sp

from .messages import preview

METHODS = ('unweighted', 'weighted_normalized')


class TreeDistances:
    """The UniFrac distance of any set of samples of ``counts``, from ``tree``.

    ``counts``: samples x features (sparse); ``tree``: an skbio.TreeNode, a bp.BP or a
    Newick string whose tips are the feature IDs (extra tips are fine).
    """

    def __init__(self, counts, feature_ids, tree, method='unweighted'):
        import bp
        if method not in METHODS:
            raise ValueError(f'UniFrac method {method!r}: use one of {", ".join(METHODS)}.')
        self.counts = sp.csr_matrix(counts, dtype=np.float64)
        self.feature_ids = np.asarray([str(f) for f in feature_ids], dtype=object)
        self.method = method
        if isinstance(tree, str):
            tree = bp.parse_newick(tree)
        elif not isinstance(tree, bp.BP):      # an skbio.TreeNode
            tree = bp.from_skbio_treenode(tree)
        self.tree = tree
        tips = {tree.name(i) for i in range(len(tree.B)) if tree.B[i] and tree.isleaf(i)}
        used = np.asarray(self.counts.sum(axis=0)).ravel() > 0
        missing = [f for f, u in zip(self.feature_ids, used) if u and f not in tips]
        if missing:
            shown = preview(missing)
            raise ValueError(f'{len(missing)} of {int(used.sum())} features in the table are not '
                             f'tips of the phylogeny: {shown}. Give the rooted tree built from '
                             'these representative sequences (e.g. `qiime phylogeny '
                             'align-to-tree-mafft-fasttree`), or filter the table to the tree.')
        self._fingerprint = hashlib.sha256(
            method.encode() + str(len(tree.B)).encode() +
            ','.join(sorted(tips)).encode()).hexdigest()[:16]

    def __len__(self):
        return self.counts.shape[0]

    def block(self, rows):
        """(B, B) float32 distances between these sample rows, in this order."""
        import biom
        import unifrac
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) < 2:
            return np.zeros((len(rows), len(rows)), np.float32)
        sub = self.counts[rows]
        used = np.flatnonzero(np.asarray(sub.sum(axis=0)).ravel() > 0)
        names = [str(i) for i in range(len(rows))]
        table = biom.Table(sub[:, used].T.tocsr(), self.feature_ids[used].tolist(), names)
        dm = unifrac.ssu_inmem(table, self.tree, self.method, False, 1.0, False, 1)
        return dm.filter(names).data.astype(np.float32)

    def fingerprint(self):
        """What a resumed run checks: the method and the tree's tips and size."""
        return f'tree:{self.method}:{self._fingerprint}'
