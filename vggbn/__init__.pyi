# Type information of the package's top level: `vggbn/__init__.py` re-exports the API lazily (`__getattr__`), which
# type checkers cannot follow, so the names are declared here.
from vggbn.api import BnStatistics as BnStatistics
from vggbn.api import CalibratedModel as CalibratedModel
from vggbn.api import bn_targets as bn_targets
from vggbn.api import export_serving as export_serving
from vggbn.api import identity_error as identity_error
from vggbn.api import insert_calibrated_bn as insert_calibrated_bn
from vggbn.api import measure_statistics as measure_statistics

__version__: str
__all__: list[str]

class VggbnError(Exception): ...
