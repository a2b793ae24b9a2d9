"""A model whose predict raises, standing in for a user's broken model.

No Django imports: the model server unpickles it by reference to this module."""


class Raises:
    n_features_in_ = 1

    def predict(self, rows):
        raise ValueError("negative inputs are not supported by this model")
