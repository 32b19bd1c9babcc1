"""THE bundle format (torch-free): the typed `Manifest`, `Bundle.open` (verified reading),
`BundleWriter` (staging + swap) and the versioned head store with its one `Head` type.

The runtime, the on-device adaptation and the exporter all depend on this package; it
depends only on edgetl.core.
"""

from edgetl.bundle.bundle import Bundle, bundle_digest
from edgetl.bundle.heads import DEFAULT_TASK, Head, HeadStore
from edgetl.bundle.manifest import MANIFEST, SCHEMA_VERSION, BundleError, Manifest, manifest_digest
from edgetl.bundle.writer import BundleWriter

__all__ = ["Bundle", "BundleError", "BundleWriter", "DEFAULT_TASK", "Head", "HeadStore", "MANIFEST", "Manifest",
           "SCHEMA_VERSION", "bundle_digest", "manifest_digest"]
