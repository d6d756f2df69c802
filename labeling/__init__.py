"""emosae, labeling: emotion corpora, feature labels and their scores, emotion geometry."""
