"""emosae, using side: feature statistics, clamping and steering, emotion vectors, the browser."""
