# Reference fits for structured covariances of random-effect terms (G side): glmmTMB's
# cs (a variance per effect, one correlation: jaxlmm re_csh), ar1 (one variance), diag and us
# on (0 + cond | subject), and nlme's pdCompSymm (one variance, one correlation: jaxlmm re_cs)
# and pdDiag; REML and ML.
#
# Run from the repository root (after `python tests/reference/gside/make_data.py`):
#
#     Rscript tests/reference/gside/make_reference.R
#
# Writes tests/reference/gside/reference.json: -2 log L, fixed effects and their SEs from the fitted
# marginal covariances, residual SD and
# the random-effect SDs and correlation matrix.

suppressPackageStartupMessages({
  library(glmmTMB)
  library(nlme)
  library(jsonlite)
})

dir <- file.path("tests", "reference", "gside")
named <- function(v) as.list(setNames(as.numeric(v), names(v)))
d <- read.csv(file.path(dir, "data", "gside.csv"), stringsAsFactors = TRUE)

# SEs of the fixed effects from the fitted marginal covariances, (X' V^-1 X)^-1 (glmmTMB's vcov
# comes from the joint Hessian, which is not that at the estimate)
dense_se <- function(G, sigma) {
  X <- model.matrix(y ~ arm + cond + x, d); Z <- model.matrix(~ 0 + cond, d)
  A <- matrix(0, ncol(X), ncol(X))
  for (s in levels(d$subject)) {
    ii <- which(d$subject == s)
    V <- Z[ii, , drop = FALSE] %*% G %*% t(Z[ii, , drop = FALSE]) + sigma^2 * diag(length(ii))
    A <- A + crossprod(X[ii, , drop = FALSE], solve(V, X[ii, , drop = FALSE]))
  }
  setNames(sqrt(diag(solve(A))), colnames(X))
}

cases <- list()
tmb <- c(cs = "re_csh", ar1 = "re_ar1", diag = "re_diag", us = "re_us")
for (reml in c(TRUE, FALSE)) {
  tag <- if (reml) "reml" else "ml"
  for (st in names(tmb)) {
    f <- as.formula(paste0("y ~ arm + cond + x + ", st, "(0 + cond | subject)"))
    m <- glmmTMB(f, d, REML = reml)
    vc <- VarCorr(m)$cond$subject
    cases[[paste0("glmmTMB_", st, "_", tag)]] <- list(
      jaxlmm_formula = paste0("y ~ arm + cond + x + ", tmb[[st]], "(0 + cond | subject)"), reml = reml,
      r_call = paste(deparse(m$call), collapse = " "), deviance = -2 * as.numeric(logLik(m)),
      fixef = named(fixef(m)$cond), se = named(dense_se(unclass(vc)[, ], sigma(m))), sigma = sigma(m),
      sd = as.numeric(attr(vc, "stddev")), corr = unname(attr(vc, "correlation")), n_obs = nrow(d))
  }
  meth <- if (reml) "REML" else "ML"
  ctl <- lmeControl(maxIter = 1000, msMaxIter = 1000, tolerance = 1e-12, msTol = 1e-14, niterEM = 0)
  for (pd in c("pdCompSymm", "pdDiag")) {
    m <- lme(y ~ arm + cond + x, d, random = list(subject = get(pd)(~ 0 + cond)), method = meth, control = ctl)
    G <- getVarCov(m)
    X <- model.matrix(y ~ arm + cond + x, d)
    A <- matrix(0, ncol(X), ncol(X))
    for (s in levels(d$subject)) {
      ii <- which(d$subject == s)
      A <- A + crossprod(X[ii, , drop = FALSE], solve(getVarCov(m, individuals = s, type = "marginal")[[1]],
                                                       X[ii, , drop = FALSE]))
    }
    cases[[paste0("nlme_", pd, "_", tag)]] <- list(
      jaxlmm_formula = paste0("y ~ arm + cond + x + ", if (pd == "pdDiag") "re_diag" else "re_cs",
                              "(0 + cond | subject)"), reml = reml,
      r_call = paste(deparse(m$call), collapse = " "), deviance = -2 * as.numeric(logLik(m)),
      fixef = named(fixef(m)), se = named(sqrt(diag(solve(A)))), sigma = m$sigma,
      sd = as.numeric(sqrt(diag(G))), corr = unname(cov2cor(unclass(G))[, ]), n_obs = nrow(d))
  }
}

out <- list(generated_by = "tests/reference/gside/make_reference.R", r_version = R.version.string,
            glmmTMB = as.character(packageVersion("glmmTMB")), nlme = as.character(packageVersion("nlme")),
            cases = cases)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), file.path(dir, "reference.json"))
