# Reference fits from nlme for the covariance catalogue (ARMA(1,1), continuous-time and spatial
# correlation, with and without a random intercept), from lme4 for an ordered factor
# (polynomial contrasts, R's default), and from glmmTMB for the heterogeneous Toeplitz.
#
# Run from the repository root (after `python tests/reference/catalogue/make_data.py`):
#
#     Rscript tests/reference/catalogue/make_reference.R
#
# Writes tests/reference/catalogue/reference.json.  Every case carries R's -2 log L and one
# recomputed here with the dense formula from the fitted marginal covariances (SAS's REML
# constant: no log|X'X| term; jaxlmm's deviance), the fixed effects, their SEs, sigma and the
# correlation parameters in nlme's terms.

suppressPackageStartupMessages({
  library(nlme)
  library(jsonlite)
})

dir <- file.path("tests", "reference", "catalogue")
named <- function(v) as.list(setNames(as.numeric(v), names(v)))

read_ds <- function(name) {
  d <- read.csv(file.path(dir, "data", paste0(name, ".csv")), stringsAsFactors = TRUE)
  d[!is.na(d$y), , drop = FALSE]
}

# -2 log L from per-group marginal covariances (ML; REML adds log|X'V^-1X| - p log 2 pi)
dense <- function(d, X, groups, Vlist, reml) {
  N <- nrow(X); p <- ncol(X)
  idx <- split(seq_len(N), groups)
  ld <- 0; A <- matrix(0, p, p); b <- numeric(p); c0 <- 0
  for (g in names(idx)) {
    ii <- idx[[g]]; ch <- chol(Vlist[[g]])
    W <- backsolve(ch, forwardsolve(t(ch), cbind(X[ii, , drop = FALSE], d$y[ii])))
    ld <- ld + 2 * sum(log(diag(ch)))
    A <- A + crossprod(X[ii, , drop = FALSE], W[, 1:p, drop = FALSE])
    b <- b + drop(crossprod(X[ii, , drop = FALSE], W[, p + 1]))
    c0 <- c0 + sum(d$y[ii] * W[, p + 1])
  }
  beta <- solve(A, b)
  dev <- ld + c0 - sum(b * beta) + N * log(2 * pi)
  if (reml) dev <- dev + as.numeric(determinant(A)$modulus) - p * log(2 * pi)
  list(deviance = dev, se = sqrt(diag(solve(A))))
}

cases <- list()
add <- function(name, dataset, jformula, fit, d, groups, reml, Vlist) {
  X <- model.matrix(formula(fit), d)
  dn <- dense(d, X, groups, Vlist, reml)
  cs <- fit$modelStruct$corStruct
  corr <- if (is.null(cs)) list() else named(coef(cs, unconstrained = FALSE))
  out <- list(
    dataset = paste0(dataset, ".csv"), jaxlmm_formula = jformula, reml = reml,
    r_call = paste(deparse(fit$call), collapse = " "),
    deviance_reported = -2 * as.numeric(logLik(fit)), deviance_dense = dn$deviance,
    fixef = named(fixef_or_coef(fit)), se = named(sqrt(diag(vcov(fit)))),
    se_dense = named(setNames(dn$se, colnames(X))),
    sigma = fit$sigma, corr = corr,
    n_obs = nrow(d)
  )
  if (inherits(fit, "lme")) out$re_sd <- as.numeric(sqrt(getVarCov(fit)[1, 1]))
  cases[[name]] <<- out
}
fixef_or_coef <- function(fit) if (inherits(fit, "lme")) fixef(fit) else coef(fit)
ctl <- glsControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-12)
# no EM steps and tight tolerances: nlme's defaults stop ~1e-3 above the optimum on ctime with a
# random intercept; both optimisers are run and the lower -2 log L kept
lctl <- function(opt) lmeControl(opt = opt, maxIter = 1000, msMaxIter = 1000, tolerance = 1e-12, msTol = 1e-14,
                                 niterEM = 0)

gls_V <- function(fit, d, groups) {
  C <- corMatrix(fit$modelStruct$corStruct)
  if (!is.list(C)) C <- list(C)
  V <- lapply(C, function(M) fit$sigma^2 * M)
  names(V) <- names(split(seq_len(nrow(d)), groups))
  V
}

for (reml in c(TRUE, FALSE)) {
  tag <- if (reml) "reml" else "ml"
  meth <- if (reml) "REML" else "ML"

  d <- read_ds("arma"); d <- d[order(d$subject, d$time), ]
  fit <- gls(y ~ time * arm + x, d, correlation = corARMA(form = ~ time | subject, p = 1, q = 1),
             method = meth, control = ctl)
  add(paste0("arma_", tag), "arma", "y ~ time * arm + x + arma11(time | subject)", fit, d, d$subject, reml,
      gls_V(fit, d, d$subject))

  # observation weights: the residual variance of a row divided by its weight w
  d$invw <- 1 / d$w
  fit <- gls(y ~ time * arm + x, d, correlation = corAR1(form = ~ time | subject), weights = varFixed(~ invw),
             method = meth, control = ctl)
  C <- corMatrix(fit$modelStruct$corStruct)
  idx <- split(seq_len(nrow(d)), d$subject)
  V <- lapply(names(idx), function(s) {
    sw <- sqrt(d$invw[idx[[s]]]); fit$sigma^2 * C[[s]] * outer(sw, sw)
  })
  names(V) <- names(idx)
  add(paste0("weights_ar1_", tag), "arma", "y ~ time * arm + x + ar1(time | subject)", fit, d, d$subject, reml, V)
  cases[[paste0("weights_ar1_", tag)]]$weights <- "w"
  fits <- lapply(c("nlminb", "optim"), function(o)
    lme(y ~ time * arm + x, d, random = ~ 1 | subject, weights = varFixed(~ invw), method = meth, control = lctl(o)))
  fit <- fits[[which.min(sapply(fits, function(f) -2 * as.numeric(logLik(f))))]]
  V <- lapply(levels(d$subject), function(s) getVarCov(fit, individuals = s, type = "marginal")[[1]])
  names(V) <- levels(d$subject)
  add(paste0("weights_re_", tag), "arma", "y ~ time * arm + x + (1 | subject)", fit, d, d$subject, reml, V)
  cases[[paste0("weights_re_", tag)]]$weights <- "w"

  d <- read_ds("ctime"); d <- d[order(d$subject, d$time), ]
  for (kind in c("exp", "gau", "car1")) {
    cor <- switch(kind, exp = corExp(form = ~ time | subject), gau = corGaus(form = ~ time | subject),
                  car1 = corCAR1(form = ~ time | subject))
    jname <- switch(kind, exp = "sp_exp", gau = "sp_gau", car1 = "sp_pow")
    fit <- gls(y ~ time * arm, d, correlation = cor, method = meth, control = ctl)
    add(paste0("ctime_", kind, "_", tag), "ctime", paste0("y ~ time * arm + ", jname, "(time | subject)"), fit, d,
        d$subject, reml, gls_V(fit, d, d$subject))
  }
  fits <- lapply(c("nlminb", "optim"), function(o)
    lme(y ~ time * arm, d, random = ~ 1 | subject, correlation = corExp(form = ~ time | subject),
        method = meth, control = lctl(o)))
  fit <- fits[[which.min(sapply(fits, function(f) -2 * as.numeric(logLik(f))))]]
  V <- lapply(levels(d$subject), function(s) getVarCov(fit, individuals = s, type = "marginal")[[1]])
  names(V) <- levels(d$subject)
  add(paste0("ctime_re_exp_", tag), "ctime", "y ~ time * arm + (1 | subject) + sp_exp(time | subject)", fit, d,
      d$subject, reml, V)

  d <- read_ds("space"); d <- d[order(d$field), ]
  fit <- gls(y ~ trt + px, d, correlation = corExp(form = ~ px + py | field), method = meth, control = ctl)
  add(paste0("space_exp_", tag), "space", "y ~ trt + px + sp_exp(px, py | field)", fit, d, d$field, reml,
      gls_V(fit, d, d$field))
}

# ordered factor: R's default contrasts (contr.poly) with lme4
suppressPackageStartupMessages(library(lme4))
d <- read_ds("ordered")
d$dose <- factor(d$dose, levels = paste0("d", 1:5), ordered = TRUE)
for (reml in c(TRUE, FALSE)) {
  fit <- lmer(y ~ dose * arm + (1 | subject), d, REML = reml)
  cases[[paste0("ordered_", if (reml) "reml" else "ml")]] <- list(
    dataset = "ordered.csv", jaxlmm_formula = "y ~ dose * arm + (1 | subject)", reml = reml,
    ordered = list(dose = paste0("d", 1:5)),
    r_call = paste(deparse(getCall(fit)), collapse = " "),
    deviance_reported = if (reml) as.numeric(REMLcrit(fit)) else as.numeric(deviance(fit)),
    fixef = named(fixef(fit)), se = named(sqrt(diag(as.matrix(vcov(fit))))),
    sigma = sigma(fit), re_sd = as.numeric(attr(VarCorr(fit)$subject, "stddev")), n_obs = nrow(d),
    contrasts = lapply(seq_len(5), function(i) I(unname(contr.poly(5)[i, ])))
  )
}

# heterogeneous Toeplitz (SAS TOEPH) from glmmTMB: its toep() on the visit indicators with the
# residual variance switched off (dispformula = ~ 0 fixes it at a tiny value), REML and ML
suppressPackageStartupMessages(library(glmmTMB))
d <- read_ds("arma"); d <- d[order(d$subject, d$time), ]
for (reml in c(TRUE, FALSE)) {
  fit <- glmmTMB(y ~ time * arm + x + toep(visit + 0 | subject), d, dispformula = ~ 0, REML = reml)
  vc <- VarCorr(fit)$cond$subject
  cases[[paste0("toeph_glmmTMB_", if (reml) "reml" else "ml")]] <- list(
    dataset = "arma.csv", jaxlmm_formula = "y ~ time * arm + x + toeph(visit | subject)", reml = reml,
    r_call = paste(deparse(fit$call), collapse = " "),
    deviance_reported = -2 * as.numeric(logLik(fit)), fixef = named(fixef(fit)$cond),
    sd = as.numeric(attr(vc, "stddev")), lag_corr = as.numeric(attr(vc, "correlation")[1, -1]), n_obs = nrow(d))
}

out <- list(
  `_versions` = list(R = R.version.string, nlme = as.character(packageVersion("nlme")),
                     lme4 = as.character(packageVersion("lme4")), glmmTMB = as.character(packageVersion("glmmTMB")),
                     generated = as.character(Sys.Date())),
  cases = cases
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), file.path(dir, "reference.json"))
