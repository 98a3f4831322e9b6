"""q2-aam: AAM (Attention All Microbes) as a QIIME 2 plugin.

numpy, pandas, scipy, scikit-learn, scikit-bio, biom-format and QIIME 2 itself are
deliberately not listed: they come with QIIME 2 (conda, or Debian's q2-sample-classifier
brings scikit-learn), and pip must not replace their compiled parts. torch is installed by ``make setup`` (or by hand, see README.md).
"""
from setuptools import find_packages, setup

setup(
    name='q2-aam',
    version='0.1.0',
    description='AAM (Attention All Microbes) transformers for 16S data, as a QIIME 2 plugin.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='BSD-3-Clause',
    url='https://github.com/q2-aam/q2-aam',
    author='q2-aam development team',
    python_requires='>=3.10',
    packages=find_packages(include=['q2_aam', 'q2_aam.*']),
    package_data={'q2_aam': ['citations.bib', 'assets/**/*', 'data/**/*']},
    include_package_data=True,
    # every import the package makes that QIIME 2 does not bring (the plots need matplotlib)
    install_requires=['tqdm', 'tensorboard', 'matplotlib'],
    entry_points={'qiime2.plugins': ['q2-aam = q2_aam.plugin_setup:plugin']},
    zip_safe=False,
)
