package com.example.web; // CHANGE: your package

import java.util.Arrays;

import org.springframework.core.env.Environment;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.RestController;

/**
 * GET /profile answers the active real profile (real1 or real2): the alternative health check
 * (health.path: /profile, health.body_contains: real in portswap.yml), and a quick way to see
 * which copy nginx sends you to.
 */
@RestController
public class ProfileController {
    private final Environment env;

    public ProfileController(Environment env) {
        this.env = env;
    }

    @GetMapping("/profile")
    public String profile() {
        return Arrays.stream(env.getActiveProfiles())
                .filter(p -> p.startsWith("real"))
                .findFirst()
                .orElse("default");
    }
}
