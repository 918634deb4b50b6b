"""Final datasets per QA stage and their export layouts (reference and Hub-ready), and publishing.

- `dataset.build_dataset`: filters, near-duplicate removal and the split, with DuckDB over shards.
- `reference.write_reference`: the reference recipe's layout (png_images_base64 JSON arrays).
- `hub.write_hub`: parquet with image bytes + a README dataset card, for `datasets.load_dataset`.
- `publish.publish_folder`: `HfApi.upload_folder`, or a dry run that records what it would upload.
"""
