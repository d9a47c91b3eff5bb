"""Studies built from the library's parts: the digits dictionary lookup
(:mod:`~pyro_attention.experiments.digits_lookup`) and the stacked-attention depth study
(:mod:`~pyro_attention.experiments.sla_depth`)."""
