"""Integrations with other libraries: spaCy (`spacy_ner`)."""
