"""Data and helpers the tests share: corpora, labelled scenes, data set layouts, the service client."""
