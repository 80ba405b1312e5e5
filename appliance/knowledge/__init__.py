"""The organization's own knowledge: FAQ entries with approved answers, and documents.

``sources`` reads the files (a bad file is an error naming the file and the line), ``index``
builds and searches the hybrid index (BM25 beside sentence embeddings) and keeps it under
APPLIANCE_HOME, ``policy`` decides in code how a question is answered (the approved answer, a
document's sentences quoted, a grounded model answer, or the honest unknown), and ``base``
ties them into the pipeline's ``Knowledge`` port. Pure logic and files: the embedding model
comes in through a Protocol.
"""
