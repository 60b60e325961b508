"""Lightning glue over the pure-torch ``diffinv`` library: prior training (fit), inverse-problem
solving (predict), the prediction writer, and the ``diffinv`` command line."""
