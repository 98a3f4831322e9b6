"""classify-samples / regress-samples (and -ncv), feature-importance and accuracy-report
through the Python API: subjects stay on one side, outputs are what q2-sample-classifier's
visualizers read, and bad splits are refused before anything is fitted."""
import numpy as np
import pandas as pd
import pytest
import qiime2

from plugin_fixtures import SHARED_DATA, body_site, days, metadata, rep_seqs, table
from qiime2.plugins.aam.methods import feature_importance, fit
from qiime2.plugins.aam.pipelines import (classify_samples, classify_samples_ncv,
                                          regress_samples, regress_samples_ncv)

QUICK = dict(epochs=2, ensemble_size=2, max_asvs=32, threads=1, device='cpu')


@pytest.fixture(scope='module')
def classified():
    return classify_samples(table=table(), sequences=rep_seqs(), metadata=body_site(),
                            test_size=0.3, random_state=2, **QUICK)


def test_classify_samples_gives_q2_sample_classifiers_outputs(classified, tmp_path):
    assert [str(r.type) for r in classified] == [
        'AAMModel[AAMClassifier]', 'SampleData[ClassifierPredictions]',
        'SampleData[Probabilities]', 'FeatureData[Importance]', 'Visualization',
        'SampleData[TrueTargets]', 'SampleData[TrueTargets]']
    train = classified.training_targets.view(pd.Series)
    test = classified.test_targets.view(pd.Series)
    predictions = classified.predictions.view(pd.Series)
    assert not set(train.index) & set(test.index)
    assert set(train.index) | set(test.index) == set(metadata().get_ids())
    assert sorted(predictions.index) == sorted(test.index)
    assert set(train) == set(body_site().to_series())             # every class trains
    probabilities = classified.probabilities.view(pd.DataFrame)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    classified.accuracy_results.export_data(str(tmp_path / 'report'))
    html = (tmp_path / 'report' / 'index.html').read_text()
    assert '<td>random forest (q2-sample-classifier defaults)</td><td>accuracy</td>' in html
    truth = test.reindex(predictions.index)
    accuracy = (predictions == truth).mean()
    assert f'<td>q2-aam</td><td>accuracy</td><td>{accuracy:.3f}</td>' in html
    assert (tmp_path / 'report' / 'roc.png').is_file()


def test_q2_sample_classifiers_visualizers_read_the_outputs(classified, tmp_path):
    from qiime2.plugins.sample_classifier.visualizers import confusion_matrix
    from qiime2.plugins.sample_classifier.pipelines import heatmap
    viz, = confusion_matrix(predictions=classified.predictions,
                            probabilities=classified.probabilities, truth=body_site())
    viz.export_data(str(tmp_path / 'cm'))
    assert (tmp_path / 'cm' / 'predictive_accuracy.tsv').is_file()
    heat, filtered = heatmap(table=table(), importance=classified.feature_importance,
                             sample_metadata=metadata().get_column('body-site'),
                             group_samples=True, feature_count=10)
    assert filtered.view(pd.DataFrame).shape[1] == 10
    importance = classified.feature_importance.view(pd.DataFrame)
    assert list(importance.columns) == ['importance', 'transformer', 'linear', 'tree', 'kmers']
    assert importance['importance'].is_monotonic_decreasing
    # the heatmap ranks ASVs by the sum of the columns
    top = importance.sum(axis=1).sort_values(ascending=False).index[:10]
    assert set(filtered.view(pd.DataFrame).columns) == set(top)


def test_regress_samples_and_the_scatterplot():
    from qiime2.plugins.sample_classifier.visualizers import scatterplot
    result = regress_samples(table=table(), sequences=rep_seqs(), metadata=days(),
                             random_state=3, stratify=True, **QUICK)
    assert str(result.model.type) == 'AAMModel[AAMRegressor]'
    assert len(result) == 6                                          # no probabilities
    viz, = scatterplot(predictions=result.predictions, truth=days())
    assert str(viz.type) == 'Visualization'


def test_ncv_predicts_every_sample_once():
    result = classify_samples_ncv(table=table(), sequences=rep_seqs(), metadata=body_site(),
                                  cv=3, random_state=1, **QUICK)
    predictions = result.predictions.view(pd.Series)
    assert sorted(predictions.index) == sorted(metadata().get_ids())
    probabilities = result.probabilities.view(pd.DataFrame)
    assert sorted(probabilities.index) == sorted(predictions.index)
    importance = result.feature_importance.view(pd.DataFrame)
    assert importance['importance'].sum() == pytest.approx(1.0, rel=1e-6)


def _subjects(series):
    return qiime2.CategoricalMetadataColumn(series.astype(str).rename('subject'))


def test_refusals_name_the_problem_before_anything_is_fitted(monkeypatch):
    from q2_aam.actions import runs as actions
    calls = []
    monkeypatch.setattr(actions, 'train', lambda *a, **k: calls.append(1))
    subject = metadata().get_column('subject').to_series()
    with_gap = subject.copy()
    with_gap.iloc[:3] = np.nan
    with pytest.raises(ValueError, match=r"3 of 34 samples have no value in the groups "
                                         r"column 'subject'"):
        classify_samples(table=table(), sequences=rep_seqs(), metadata=body_site(),
                         groups=qiime2.CategoricalMetadataColumn(with_gap), **QUICK)
    with pytest.raises(ValueError, match=r'cv 5 asks for more folds than the samples allow: '
                                         r'5 folds need at least 5 groups; there are 2\. '
                                         r'Nothing was fitted'):
        regress_samples_ncv(table=table(), sequences=rep_seqs(), metadata=days(),
                            groups=_subjects(subject), cv=5, **QUICK)
    # every sample of one class in one group: that group on the test side leaves the
    # class out of training
    site = body_site().to_series()
    one_group = subject.where(site != 'gut', 'gut-donor')
    with pytest.raises(ValueError, match=r"leaves 1 classes out of the training samples: "
                                         r"'gut'.*Nothing was fitted"):
        for seed in range(20):                 # a seed that puts the gut group in the test
            classify_samples(table=table(), sequences=rep_seqs(), metadata=body_site(),
                             groups=_subjects(one_group), test_size=0.5, random_state=seed,
                             **QUICK)
    with pytest.raises(ValueError, match=r"samples of the table have no value in metadata "
                                         r"column 'body-site'.*--p-missing-samples ignore"):
        partial = qiime2.CategoricalMetadataColumn(site.iloc[:30])
        classify_samples(table=table(), sequences=rep_seqs(), metadata=partial, **QUICK)
    assert calls == []


@pytest.mark.skipif(not (SHARED_DATA / 'sleep-apnea-10422').exists(),
                    reason='../shared/data is not here')
def test_no_mouse_is_on_both_sides_of_a_sleep_apnea_split():
    folder = SHARED_DATA / 'sleep-apnea-10422'
    md = qiime2.Metadata.load(str(folder / 'metadata.tsv'))
    mice = md.get_column('host_subject_id')
    mice = _subjects(mice.to_series())
    result = regress_samples(
        table=qiime2.Artifact.load(str(folder / 'table.qza')),
        sequences=qiime2.Artifact.load(str(folder / 'rep-seqs.qza')),
        metadata=md.get_column('age'), groups=mice, random_state=4,
        **{**QUICK, 'epochs': 1})
    mouse = mice.to_series()
    train = set(mouse[result.training_targets.view(pd.Series).index])
    test = set(mouse[result.test_targets.view(pd.Series).index])
    assert train and test and not train & test


def test_the_planted_asvs_rank_first_for_every_member():
    """Class b has ASVs f0 and f1, class a f2 and f3: for each member the first two ASVs are
    planted ones (a member may lean on one ASV of a pair that always comes together and give
    its twin little, so not all four need lead)."""
    from synthetic import views
    from q2_aam.actions.fit import fit
    t, s, c, _ = views('planted')
    model, importance = fit(table=t, sequences=s, metadata=c, ensemble_size=2, epochs=40,
                            batch_size=8, embedding_dim=16, attention_heads=2, kmer_size=4,
                            threads=1, device='cpu')
    planted = {'f0', 'f1', 'f2', 'f3'}
    for column in ('importance', 'transformer', 'linear', 'tree', 'kmers'):
        ranked = list(importance[column].sort_values(ascending=False).index)
        assert set(ranked[:2]) <= planted, \
            (column, importance[column].sort_values(ascending=False).head())


def test_feature_importance_through_the_api():
    model = fit(table=table(), sequences=rep_seqs(), metadata=days(), **QUICK).model
    importance, = feature_importance(model=model, table=table(), sequences=rep_seqs())
    frame = importance.view(pd.DataFrame)
    assert list(frame.columns) == ['importance', 'transformer', 'linear', 'tree', 'kmers']
    assert (frame.to_numpy() >= 0).all() and frame['importance'].sum() == pytest.approx(1.0)
