"""Paper layers torch lacks (torch.nn already has LocalResponseNorm, PReLU, Dropout2d: use those).

* ``LocalContrastNorm``: Jarrett et al. 2009's subtractive + divisive normalization (S0 L200-230).
* ``StochasticPool2d``: Zeiler & Fergus 2013's stochastic pooling (S3 L3746-3792).
* ``DropConnectLinear``: Wan et al. 2013's DropConnect on a fully connected layer (S3 L3727-3745).
* ``Maxout``: Goodfellow et al. 2013's max over groups of feature maps (S0 L1131; S4 L1267-1284).
* ``init``: He (Kaiming), Xavier (Glorot) and the papers' own Gaussian initialisations.
"""
from .dropconnect import DropConnectLinear
from .init import init_gaussian, init_he, init_xavier
from .lcn import LocalContrastNorm, gaussian_window
from .maxout import Maxout
from .stochastic_pool import StochasticPool2d

__all__ = ["DropConnectLinear", "LocalContrastNorm", "Maxout", "StochasticPool2d", "gaussian_window",
           "init_gaussian", "init_he", "init_xavier"]
