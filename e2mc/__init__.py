"""E2MC: Effective Entropy Maximization Criterion for continued SSL pre-training."""
from e2mc.criterion import E2MC, covariance_penalty, m_spacings_entropy, to_compact

__all__ = ["E2MC", "covariance_penalty", "m_spacings_entropy", "to_compact"]
__version__ = "0.1.0"
