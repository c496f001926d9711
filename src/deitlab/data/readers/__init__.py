"""One module per file format. Each reader takes a :class:`~deitlab.data.imageset.DatasetSpec` and returns an
:class:`~deitlab.data.imageset.ImageSet`; the registry (``deitlab.data.datasets``) names them in its table."""
