"""Cached features: extractors (fbank, transformers encoders), the Parquet store, and training datasets.

Flow: `factory.get_extractor(name)` builds an `extractor.Extractor` (`fbank.FbankExtractor` or
`encoder.EncoderExtractor`) that turns waves into (frames, dim) arrays, `build.build_cache` writes them
through `writer.FeatureWriter` into a `store.FeatureStore` (sharded Parquet + metadata JSON), and
`dataset.FeatureDataset` / `pad_collate` / `LengthBucketSampler` read the store back for training.
Import the submodules themselves; importing this package pulls in neither torch nor transformers.
"""
