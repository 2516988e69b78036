"""spn: camera identification from sensor pattern noise (PRNU), with JPEG restoration.

The package is a library core (``spncli.evidence``, ``spncli.jpegtables``,
``spncli.residual``, ``spncli.fingerprint``, ``spncli.pce``, ``spncli.store``)
with a thin command-line layer in ``spncli.cli``. The core never imports the
CLI framework.
"""

__version__ = "0.1.0"
