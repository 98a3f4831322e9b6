"""q2-aam: the AAM transformer for 16S amplicon data, as a QIIME 2 plugin."""
try:
    from importlib.metadata import PackageNotFoundError, version
    __version__ = version('q2-aam')
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = '0.1.0'
