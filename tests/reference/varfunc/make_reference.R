# Reference fits from nlme for variance functions (varIdent by a factor that is not the visit,
# varPower and varExp of a covariate, and their combination by varComb) with correlation
# structures and random effects.
#
# Run from the repository root (after `python tests/reference/varfunc/make_data.py`):
#
#     Rscript tests/reference/varfunc/make_reference.R
#
# Writes tests/reference/varfunc/reference.json: per case R's -2 log L (nlme's REML constant is
# SAS's and jaxlmm's), the fixed effects and their SEs, sigma, the variance-function parameters
# (nlme's natural scale: SD ratios for varIdent, the power, the exponential rate) and the
# correlation parameters.  For lme, both optimisers run and the lower -2 log L is kept.

suppressPackageStartupMessages({
  library(nlme)
  library(jsonlite)
})

dir <- file.path("tests", "reference", "varfunc")
named <- function(v) as.list(setNames(as.numeric(v), names(v)))
d <- read.csv(file.path(dir, "data", "varfunc.csv"), stringsAsFactors = TRUE)
d <- d[!is.na(d$y), , drop = FALSE]
d$vi <- as.integer(sub("V", "", d$visit))
d <- d[order(d$subject, d$vi), ]

ctl <- glsControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-12)
lctl <- function(opt) lmeControl(opt = opt, maxIter = 1000, msMaxIter = 1000, tolerance = 1e-12, msTol = 1e-14,
                                 niterEM = 0)
best_lme <- function(...) {
  fits <- lapply(c("nlminb", "optim"), function(o) lme(..., control = lctl(o)))
  fits[[which.min(sapply(fits, function(f) -2 * as.numeric(logLik(f))))]]
}

# SEs of the fixed effects from the fitted marginal covariances, (X' V^-1 X)^-1 (gls's vcov
# under ML scales sigma by sqrt(N / (N - p)); SAS, lme and jaxlmm do not)
dense_se <- function(fit) {
  X <- model.matrix(formula(fit), d)
  A <- matrix(0, ncol(X), ncol(X))
  for (s in levels(droplevels(d$subject))) {
    ii <- which(d$subject == s)
    V <- if (inherits(fit, "lme")) getVarCov(fit, individuals = s, type = "marginal")[[1]] else
      getVarCov(fit, individual = s)
    A <- A + crossprod(X[ii, , drop = FALSE], solve(V, X[ii, , drop = FALSE]))
  }
  setNames(sqrt(diag(solve(A))), colnames(X))
}

cases <- list()
add <- function(name, jformula, fit, reml) {
  vs <- fit$modelStruct$varStruct
  cs <- fit$modelStruct$corStruct
  fe <- if (inherits(fit, "lme")) fixef(fit) else coef(fit)
  out <- list(
    jaxlmm_formula = jformula, reml = reml, r_call = paste(deparse(fit$call), collapse = " "),
    deviance = -2 * as.numeric(logLik(fit)), fixef = named(fe), se = named(sqrt(diag(vcov(fit)))),
    se_dense = named(dense_se(fit)),
    sigma = fit$sigma, varfunc = named(coef(vs, unconstrained = FALSE)),
    corr = if (is.null(cs)) list() else named(coef(cs, unconstrained = FALSE)), n_obs = nrow(d)
  )
  if (inherits(fit, "lme")) out$re_sd <- as.numeric(sqrt(getVarCov(fit)[1, 1]))
  cases[[name]] <<- out
}

for (reml in c(TRUE, FALSE)) {
  tag <- if (reml) "reml" else "ml"
  meth <- if (reml) "REML" else "ML"
  fit <- gls(y ~ arm * visit + x, d, correlation = corAR1(form = ~ vi | subject),
             weights = varIdent(form = ~ 1 | sex), method = meth, control = ctl)
  add(paste0("ident_ar1_", tag), "y ~ arm * visit + x + var_ident(sex) + ar1(visit | subject)", fit, reml)

  fit <- best_lme(y ~ arm * visit + x, d, random = ~ 1 | subject, weights = varPower(form = ~ dose), method = meth)
  add(paste0("power_re_", tag), "y ~ arm * visit + x + (1 | subject) + var_power(dose)", fit, reml)

  fit <- gls(y ~ arm * visit + x, d, correlation = corCompSymm(form = ~ 1 | subject),
             weights = varComb(varExp(form = ~ dose), varIdent(form = ~ 1 | sex)), method = meth, control = ctl)
  add(paste0("exp_ident_cs_", tag), "y ~ arm * visit + x + var_exp(dose) + var_ident(sex) + cs(visit | subject)",
      fit, reml)

  fit <- best_lme(y ~ arm + ctime, d, random = ~ 1 | subject, correlation = corExp(form = ~ ctime | subject),
                  weights = varIdent(form = ~ 1 | sex), method = meth)
  add(paste0("ident_re_ctime_", tag), "y ~ arm + ctime + (1 | subject) + var_ident(sex) + sp_exp(ctime | subject)",
      fit, reml)

  fit <- gls(y ~ arm * visit + x, d, correlation = corSymm(form = ~ vi | subject),
             weights = varComb(varIdent(form = ~ 1 | vi), varPower(form = ~ dose)), method = meth, control = ctl)
  add(paste0("power_un_", tag), "y ~ arm * visit + x + var_power(dose) + un(visit | subject)", fit, reml)
}

out <- list(
  generated_by = "tests/reference/varfunc/make_reference.R",
  r_version = R.version.string, nlme = as.character(packageVersion("nlme")), cases = cases
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), file.path(dir, "reference.json"))
