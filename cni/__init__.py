"""Pod networking through CNI plugins: config loading, plugin execution, result cache, netns."""
